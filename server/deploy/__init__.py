"""Running a real federation: the SuperLink process, the flwr CLI, `fedguard-server`."""
