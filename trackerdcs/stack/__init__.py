"""Starting and stopping the processes of a local stack (used by `make run` and by the tests)."""
