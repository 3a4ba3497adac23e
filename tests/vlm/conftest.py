import pytest

from vlm.images import load_images
from vlm.loading import build_preset


@pytest.fixture(scope="session")
def tiny():
    return build_preset("tiny", seed=0)


@pytest.fixture(scope="session")
def photos():
    return load_images(limit=2)


@pytest.fixture(scope="session")
def pixel_values(tiny, photos):
    return tiny.preprocess([im for _, im in photos])
