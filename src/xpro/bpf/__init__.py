"""The BPF loader: a cffi (ABI mode) binding over the system libbpf.so.1.

Open and load the packaged XDP object, reach its maps as Python mappings
(typed with numpy dtypes), change its global data live, run it with
``BPF_PROG_TEST_RUN``, read its ring buffer, and attach it to interfaces::

    from xpro.bpf import BpfObject, XdpMode, object_path

    with BpfObject(object_path(), pin_dir="/sys/fs/bpf/xpro/eth0") as obj:
        flows = obj.maps["flows"].typed(FLOW_KEY, FLOW)
        link = obj.programs["xpro_xdp"].attach_xdp("eth0", XdpMode.NATIVE)
        link.pin("/sys/fs/bpf/xpro/eth0/link")
"""

from __future__ import annotations

from xpro.bpf._ffi import check, libbpf_version, num_possible_cpus
from xpro.bpf.fs import BPFFS_ROOT, ensure_bpffs, is_bpffs
from xpro.bpf.maps import (
    BPF_ANY,
    BPF_EXIST,
    BPF_NOEXIST,
    GlobalData,
    Map,
    MapType,
    RingBuffer,
)
from xpro.bpf.object import (
    BPF_F_TEST_XDP_LIVE_FRAMES,
    XDP_ABORTED,
    XDP_DROP,
    XDP_PASS,
    XDP_REDIRECT,
    XDP_TX,
    BpfObject,
    Program,
    TestRunResult,
    object_path,
)
from xpro.bpf.xdp import (
    XDP_FLAGS_DRV_MODE,
    XDP_FLAGS_HW_MODE,
    XDP_FLAGS_SKB_MODE,
    XdpLink,
    XdpMode,
    detach_xdp,
    in_netns,
    interface_driver,
    xdp_query,
)

__all__ = [
    "BPFFS_ROOT",
    "BPF_ANY",
    "BPF_EXIST",
    "BPF_F_TEST_XDP_LIVE_FRAMES",
    "BPF_NOEXIST",
    "XDP_ABORTED",
    "XDP_DROP",
    "XDP_FLAGS_DRV_MODE",
    "XDP_FLAGS_HW_MODE",
    "XDP_FLAGS_SKB_MODE",
    "XDP_PASS",
    "XDP_REDIRECT",
    "XDP_TX",
    "BpfObject",
    "GlobalData",
    "Map",
    "MapType",
    "Program",
    "RingBuffer",
    "TestRunResult",
    "XdpLink",
    "XdpMode",
    "check",
    "detach_xdp",
    "ensure_bpffs",
    "in_netns",
    "interface_driver",
    "is_bpffs",
    "libbpf_version",
    "num_possible_cpus",
    "object_path",
    "xdp_query",
]
