"""Side-by-side benchmarks of flask-pgpool and what users would run instead.

Run ``python -m benchmarks`` (full run, about 15 minutes) or
``python -m benchmarks --quick`` (harness check, under 2 minutes).
The pool engine alone: ``python -m benchmarks.engine`` (about 6 minutes;
``--quick`` under a minute; ``--profile`` for where its time goes).
"""
