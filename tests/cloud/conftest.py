from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cloud_harness import Cloud, running_cloud


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[Cloud]:
    async with running_cloud(tmp_path) as running:
        yield running
