# cython: language_level=3
"""The binding: CoreHeap, Block and AgentCore over the C core. Thin by design,
and standing alone: the layer above (heap.py) is told what happens through
one events object (HeapEvents), never called by name. Split by job:

  _args.pxi    argument parsing and the partition-name table
  _errors.pxi  C status -> named exception; the stale-agent message
  _dicts.pxi   the one shape of an owner's dict, and the stats dicts
  _heap.pxi    _Arena, CoreHeap's base: life, blocks, leases, stats, check
  _owners.pxi  CoreHeap: the owner protocol, sweep queues, thread caches
  _block.pxi   Block: buffer protocol, exact staleness
  _agent.pxi   AgentCore: an agent's one-call allocation
  _channel.pxi ChannelCore: a channel's one-call send and receive
  _numpy.pxi   the NEP 49 handler's glue
"""

cimport cython
from cpython.buffer cimport PyBUF_C_CONTIGUOUS, PyBuffer_FillInfo, PyBuffer_Release, PyObject_GetBuffer
from cpython.exc cimport PyErr_CheckSignals, PyErr_Fetch, PyErr_Restore
from cpython.ref cimport PyObject
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from swarmheap.includes.np_handler cimport *
from swarmheap.includes.sh_testing cimport SH_TESTING_BUILD, sh_test_hold_lock
from swarmheap.includes.swarmheap cimport *

shnp_import()

import math
import os
import stat as stat_mode
import time
import weakref

import numpy as np

from swarmheap.errors import (
    ChannelClosed,
    AgentSealed,
    AgentStateError,
    IndexMoved,
    AttachError,
    HeapCorrupt,
    HeapExists,
    HeapNotFound,
    InvalidHandle,
    MessageTooLarge,
    PartitionFull,
    ReadOnlyHeap,
    StaleBlock,
    StaleHandle,
    SwarmHeapError,
    TooManyAgents,
)
from swarmheap.handle import Handle
from swarmheap.sizes import format_size, parse_size

include "_args.pxi"
include "_errors.pxi"
include "_dicts.pxi"
include "_offsets.pxi"
include "_exports.pxi"
include "_heap.pxi"
include "_owners.pxi"
include "_block.pxi"
include "_agent.pxi"
include "_channel.pxi"
include "_numpy.pxi"
