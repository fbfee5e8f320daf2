"""Process exit codes of ``incident-bridge`` (documented in the README).

They follow the BSD ``sysexits`` convention where one fits.
"""

OK = 0
SOFTWARE = 70  # an unexpected internal error (a bug): the log has the traceback
USAGE = 64  # wrong command-line usage
CONFIG = 78  # settings missing, unreadable or invalid
UNAVAILABLE = 69  # a dependency (MongoDB, a homeserver) could not be reached at start-up
