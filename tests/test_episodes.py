import pytest
import torch

from h_model.episodes import EpisodeSampler
from tests.conftest import tiny_imageset


def test_batch_shapes_and_labels():
    data = tiny_imageset(classes=10, per_class=6, size=8)
    ep = EpisodeSampler(data, way=5, shot=2, query=3, episodes_per_batch=4, seed=0).sample()
    assert ep.support_x.shape == (4, 10, 1, 8, 8)
    assert ep.query_x.shape == (4, 15, 1, 8, 8)
    assert ep.support_y.shape == (4, 10) and ep.query_y.shape == (4, 15)
    assert ep.support_y[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert ep.query_y[0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert ep.classes.shape == (4, 5)


def test_labels_remapped_to_true_classes_and_no_image_shared():
    data = tiny_imageset(classes=10, per_class=6)
    sampler = EpisodeSampler(data, way=4, shot=2, query=4, episodes_per_batch=8, seed=1)
    for _ in range(5):
        idx, classes = sampler.sample_indices()
        for b in range(8):
            flat = idx[b].flatten().tolist()
            assert len(set(flat)) == len(flat), "an image appears twice in one episode"
            assert len(set(classes[b].tolist())) == 4, "a class appears twice"
            for n in range(4):  # label n of the episode is ImageSet class classes[b, n]
                assert set(data.labels[idx[b, n]].tolist()) == {int(classes[b, n])}
        ep = sampler.sample()
        sup = set(ep.support_x[..., 0, 0, 0].flatten().tolist())
        qry = set(ep.query_x[..., 0, 0, 0].flatten().tolist())
        # first pixels are unique per image within the first 60 images
        for b in range(8):
            s = set(ep.support_x[b, :, 0, 0, 0].tolist())
            q = set(ep.query_x[b, :, 0, 0, 0].tolist())
            assert not (s & q)
        assert sup and qry


def test_determinism_from_seed():
    data = tiny_imageset()
    a = EpisodeSampler(data, 5, 1, 2, 3, seed=7)
    b = EpisodeSampler(data, 5, 1, 2, 3, seed=7)
    c = EpisodeSampler(data, 5, 1, 2, 3, seed=8)
    ia, ib, ic = a.sample_indices()[0], b.sample_indices()[0], c.sample_indices()[0]
    assert torch.equal(ia, ib)
    assert not torch.equal(ia, ic)


def test_too_many_ways_is_a_clear_error():
    data = tiny_imageset(classes=4)
    with pytest.raises(ValueError, match="5-way episodes need 5 classes"):
        EpisodeSampler(data, way=5, shot=1, query=1)


def test_small_classes_left_out_with_warning(caplog):
    data = tiny_imageset(classes=6, per_class=6)
    keep = data.labels != 0
    keep[:3] = True  # class 0 keeps only 3 images
    small = type(data)(data.images[keep], data.labels[keep], data.class_names, data.preprocess)
    s = EpisodeSampler(small, way=5, shot=2, query=2, episodes_per_batch=20, seed=0)
    assert "1 of 6 classes have fewer than shot+query=4" in caplog.text
    _, classes = s.sample_indices()
    assert 0 not in classes.flatten().tolist()
    with pytest.raises(ValueError):
        EpisodeSampler(small, way=6, shot=2, query=2)
