"""One program per system, each with the same verbs, run as subprocesses by bench.run.

Verbs (argv): setup | enqueue-single N | enqueue-batch N SIZE | fill N | worker CONCURRENCY | latency N GAP_MS
Results are printed as one JSON object on stdout. `worker` prints READY once
connected and starts consuming when a line arrives on stdin (GO), so every
system's clock starts at the same moment: after imports and connections,
before the first claim.
"""
