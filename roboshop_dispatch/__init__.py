"""dispatchctl and the RoboShop dispatch consumer.

This module is packed into the self-contained consumer executable, so it must stay free of
imports beyond the standard library (and import nothing at all, to keep start-up fast).
"""

__version__ = "0.5.0"
