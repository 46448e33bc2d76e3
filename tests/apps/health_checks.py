"""App-level health checks for HARDENED_HEALTH_CHECK."""


def failing():
    return False


async def passing():
    return True
