"""The command line: `python -m runner VERB ...` parses arguments, calls the library and renders
what comes back with rich (main), including the live progress of a sweep (progress). The only
package that prints; it may import every other.
"""
