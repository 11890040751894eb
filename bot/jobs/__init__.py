"""The job service: one job from an interaction or button to its answer, start-up recovery, the limits check."""
