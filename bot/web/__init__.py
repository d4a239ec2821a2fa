"""The staff site (``dkimbot web``): an app-layer package over flows, adapters and core.

Nothing below the app layer imports it, and ``run --once`` never does (its imports,
Starlette and uvicorn, are paid only by ``dkimbot web`` and ``dkimbot staff``).
"""
