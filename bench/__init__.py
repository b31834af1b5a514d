"""`make bench`: llamagrid against llama-cpp-python and llama.cpp's server, side by side.

Run ``python -m bench --help`` for the options; ``--quick`` is a smoke run of a minute or two.
"""
