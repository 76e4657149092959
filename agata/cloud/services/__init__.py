"""The cloud's services on the bus (task manager, device registry, event recorder) and what
they share: the server sides of tasks, offers, notifications, record views."""
