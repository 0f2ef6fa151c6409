# C status -> the named exception, with the core's message.

_ATTACH_CODES = frozenset({SH_ETRUNCATED, SH_EMAGIC, SH_EVERSION, SH_ECHECKSUM, SH_ECORRUPT})


cdef int _raise(int rc, bint attaching=False) except -1:
    message = sh_last_error().decode("utf-8", "replace")
    code = sh_strerror(rc).decode()
    if rc == SH_EFULL:
        raise PartitionFull(message, code)
    if rc == SH_EINVAL:
        raise ValueError(message)
    if rc == SH_ENOMEM:
        raise MemoryError(message)
    if rc == SH_ENOENT:
        raise HeapNotFound(message, code)
    if rc == SH_EEXIST:
        raise HeapExists(message, code)
    if rc in _ATTACH_CODES and attaching:
        raise AttachError(message, code)
    if rc == SH_ECORRUPT:
        raise HeapCorrupt(message, code)
    if rc == SH_EBADPTR:
        raise InvalidHandle(message, code)
    if rc == SH_EDOUBLEFREE or rc == SH_EOWNER:
        raise StaleBlock(message, code)
    if rc == SH_ETOOMANY:
        raise TooManyAgents(message, code)
    if rc == SH_ESTATE or rc == SH_EPINNED:
        raise AgentStateError(message, code)
    if rc == SH_ESYS or rc == SH_ENOSPC:
        raise OSError(message)
    if rc == SH_ETIMEDOUT:
        raise TimeoutError(message)
    if rc == SH_ECLOSED:
        raise ChannelClosed(message, code)
    raise SwarmHeapError(message, code)


def stale_agent(uint32_t oid, uint32_t gen):
    """The one StaleBlock for an agent whose generation is gone."""
    return StaleBlock(f"agent {oid} (generation {gen}) was recycled", "SH_EOWNER")


def retry_while_changing(read, tuple args, str what, int attempts=100):
    """Call ``read(*args)`` until it returns something other than None (it
    returns None when what it read changed under it): the one retry loop for
    lock-free readers. AgentStateError if it kept changing, naming
    ``what.format(*args)`` (formatted only then: readers are hot paths)."""
    for _ in range(attempts):
        got = read(*args)
        if got is not None:
            return got
    raise AgentStateError(f"{what.format(*args)} keeps changing under concurrent updates")
