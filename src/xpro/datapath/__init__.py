"""What touches packets: the loaded XDP filter, the host's interfaces, AF_XDP."""
