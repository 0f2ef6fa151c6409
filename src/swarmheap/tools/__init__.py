"""The tools wing: the `swarmheap` command (cli), the demo, the stats
rendering (report) and the benchmark harness. Tools call down into the
Python layer; nothing below imports from here."""
