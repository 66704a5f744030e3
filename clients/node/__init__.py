"""Running a real node: the `fedguard-node` command, the SuperNode it launches, its manifest."""
