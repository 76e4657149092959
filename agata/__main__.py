from agata.cli.main import main

main()
