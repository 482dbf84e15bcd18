"""``xpro lab``: a proxy mesh under attack on one host, in network namespaces.

The pieces, each in its module:

* :mod:`xpro.lab.topology` -- the namespaces and veth pairs (an "internet",
  N proxies, one protected service), built and removed again;
* :mod:`xpro.lab.traffic` -- paced senders for bots, clients and floods;
* :mod:`xpro.lab.service` -- the service that counts what reaches it;
* :mod:`xpro.lab.mesh` -- what filters: the xpro mesh (in one process, or one
  daemon per proxy) or a baseline (iptables ``hashlimit``);
* :mod:`xpro.lab.scenarios` -- the named scenarios and how they are measured;
* :mod:`xpro.lab.report` -- the figures, the table, the JSON and the plots;
* :mod:`xpro.cli.lab` -- the ``xpro lab`` commands.
"""
