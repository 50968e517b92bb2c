"""The one-machine lab: the whole cluster in network namespaces on one Linux host."""
