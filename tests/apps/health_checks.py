"""App-level health checks for HARDENED_HEALTH_CHECK."""


def failing():
    return False


async def passing():
    return True


def unless_flagged():
    """Passes until the file HEALTH_FAIL_FILE exists (a database that goes away after start)."""
    import os

    return not os.path.exists(os.environ["HEALTH_FAIL_FILE"])
