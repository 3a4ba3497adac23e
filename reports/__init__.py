"""Reports: rows of predictions, measurements and evaluations in; tables, figures and HTML out.

Uses the other three packages (costmodel, profiler, reducers); nothing imports it back.
"""
