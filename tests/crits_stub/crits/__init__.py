"""
Test stand-in for the C{crits} package (see ../README.md).
"""
