"""The AF_XDP data path: Algorithm 2 in userspace, over batches of frames.

* :mod:`xpro.datapath.afxdp.xsk` -- AF_XDP sockets, UMEM and rings (libxdp through cffi);
* :mod:`xpro.datapath.afxdp.parse` -- ``bpf/parsing.h`` over a batch, in numpy;
* :mod:`xpro.datapath.afxdp.table` -- the flow and destination tables;
* :mod:`xpro.datapath.afxdp.filter` -- :class:`~xpro.datapath.afxdp.filter.UserFilter`, the filter
  with the interface the sync uses;
* :mod:`xpro.datapath.afxdp.datapath` -- the loop: redirect, filter, forward.

The backend that puts them together is :mod:`xpro.backends.afxdp`.
"""
