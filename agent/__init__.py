"""The node agent (`ha-agent --config FILE`), one per proxy node.

It keeps `nodes/<name>` alive under its own etcd lease, reports the local
proxy's health, and holds exactly the VIPs that `vips/` assigns to it, with a
kernel address lifetime that runs out before the lease can (see
`haproxy_py.cluster` for the hand-over protocol). Modules:

    state         the pure decision core: which VIPs to hold, when (no I/O, time passed in)
    arming        its lease and fence arithmetic: when an arm is allowed, when its fence falls
    actions       what the core asks the daemon to do
    daemon        the wiring: the parts built around the core, supervised tasks
    actor         the one task that runs the observers' steps against the core, in order
    observers     the loops that post steps: keepalive, liveness probes, watch, reconcile, tick
    effects       actions carried out: addresses, GARP, the etcd writer
    registration  `nodes/<name>`: what goes in it and when it is written
    handover      a released VIP's clients told to go once its next owner holds it
    release       the clean stop: every VIP handed over, then the lease revoked
    failsafe      the failsafe's pure core: rounds, answers, promises (etcd outages)
    failsafeloop  its I/O: membership, rounds over mutual TLS, promises bound to the core
    peer          the peer endpoint (mTLS): failsafe rounds, the controller's probe, status
    fence         the nftables fence: a VIP's traffic and ARP dropped at its deadline
    nftables      libnftables through ctypes (one transaction per call)
    netlink       VIP addresses with valid/preferred lifetimes (pyroute2), fenced first
    garp          gratuitous ARP bursts and refreshes (AF_PACKET)
    proxy         the local proxy's admin API (/healthz, /undrain, /drain?address=)
    ready         waits until a daemon is live again (the units' ExecStartPost)
    metrics       /metrics (Prometheus text)
    cli           the entry point (the daemons' convention: `haproxy_py.daemon`)

The `[agent]` section, with its defaults (all times in seconds):

    [agent]
    lease_ttl = 2               # etcd lease; the fence and keepalive timings derive from it
    address_lifetime = 1.0      # fence lifetime of a re-arm (default lease_ttl / 2)
    keepalive_interval = 0.25   # default address_lifetime / 4
    keepalive_timeout = 0.5     # default: the longest the timing rule allows, <= 2 intervals
    rearm_window = 0.25         # a keepalive answered later arms nothing (<= keepalive_timeout)
    fence_margin = 0.2          # left between the fence falling and the lease expiring
    etcd_election_timeout = 1.0 # etcd's --election-timeout: its minimum lease TTL follows
    etcd_heartbeat_interval = 0.1
    reconcile_interval = 1.0    # full compare of etcd, the kernel and this agent's view
    proxy_admin_url = "http://127.0.0.1:9901"   # default: where this file's [admin] binds
    # with an https:// URL (the admin API requires a client certificate), all three:
    # proxy_admin_cacert = "/etc/haproxy-py/ca.crt"   # the CA of the proxy's certificate
    # proxy_admin_cert = "/etc/haproxy-py/agent.crt"  # this agent's client certificate
    # proxy_admin_key = "/etc/haproxy-py/agent.key"
    health_interval = 0.1       # a /healthz (liveness) probe starts this often, overlapping
    health_timeout = 0.3        # a probe not answered by then is a miss
    health_rise = 2             # good probes in a row before the node offers itself
    health_fall = 3             # misses in a row before it drops its VIPs (refused: at once)
    garp_count = 3              # frames per burst, `garp_spacing` apart
    garp_spacing = 0.02
    garp_second_burst = 2.0     # a second burst this long after the first
    garp_refresh = 10.0         # then one request and one reply this often
    metrics_bind = "127.0.0.1:9732"   # "" turns /metrics off
    vip_prefix_length = 32
    peer_port = 9734            # the peer endpoint, on [node] address; the same on every node
    # peer_crl = "/etc/haproxy-py/ca.crl"   # refuse callers the cluster CA revoked
"""
