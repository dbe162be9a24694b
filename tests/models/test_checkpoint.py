import torch
import pytest

from detbatch import models


def test_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="not a detbatch checkpoint"):
        models.load_checkpoint(str(path))
