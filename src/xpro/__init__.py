"""xpro: distributed XDP proxies against DDoS.

The per-packet filter (Algorithm 2 of the X-Pro paper) runs as an XDP program;
proxies share their per-flow rate records through a master store (Algorithm 1)
so each judges the global rate.  See the documentation for the concepts.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
