"""``agata demo`` and ``agata experiment``: the original's experiments as commands.

- :mod:`~agata.demo.harness` -- cloud, operator, agent and second client of one run;
- :mod:`~agata.demo.experiment` -- one run of experiment 1 or 2;
- :mod:`~agata.demo.series` -- repeated runs and their files;
- :mod:`~agata.demo.timings` -- the steps read from the events, and their statistics;
- :mod:`~agata.demo.demo` -- the demo's live progress and final table;
- :mod:`~agata.demo.processes` -- free ports and the last sweep of left processes.
"""
