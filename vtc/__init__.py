"""The ``vtc`` command line: a thin layer over costmodel, reducers, profiler and reports."""
