import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from biovfm_lib.probe.linear import feature_batches, fit_linear_heads, predict, targets


def blobs(n, dim=16, classes=3, shift=1.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    means = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * shift
    return means[y] + torch.randn(n, dim, generator=g), y


def test_heads_learn_and_keep_the_lowest_validation_loss():
    xtr, ytr = blobs(600)
    xva, yva = blobs(200, seed=1)
    xte, yte = blobs(400, seed=2)
    fit = fit_linear_heads(feature_batches(xtr, ytr, 64, 0), xva, yva, n_out=3, multilabel=False,
                           lrs=[1e-1, 1e-2, 1e-4], epochs=15)
    h = fit.history
    best = h.loc[h.val_loss.idxmin()]
    assert (fit.lr, fit.epoch) == (best.lr, best.epoch) and fit.val_loss == best.val_loss
    assert len(h) == 15 * 3 and set(h.lr) == {1e-1, 1e-2, 1e-4}
    # the kept state really is that epoch's: its validation loss reproduces
    probs = predict(fit.head, xva, multilabel=False)
    nll = -np.log(probs[np.arange(len(yva)), yva.numpy()]).mean()
    assert abs(nll - fit.val_loss) < 1e-4
    scores = predict(fit.head, xte, multilabel=False)
    assert roc_auc_score(yte.numpy(), scores, multi_class="ovr") > 0.95
    # a learning rate of 1e-4 barely moves in 15 epochs: it must not be the one selected
    assert fit.lr != 1e-4


def test_multilabel_uses_sigmoid_outputs():
    x, y = blobs(300, classes=2)
    labels = torch.stack([y, 1 - y, (x[:, 0] > 0).long()], dim=1).numpy()
    t = targets(labels, multilabel=True)
    assert t.dtype == torch.float32 and t.shape == (300, 3)
    fit = fit_linear_heads(feature_batches(x, t, 50, 0), x, t, n_out=3, multilabel=True,
                           lrs=[1e-2], epochs=5)
    p = predict(fit.head, x, multilabel=True)
    assert p.shape == (300, 3) and not np.allclose(p.sum(1), 1.0)
    assert roc_auc_score(labels[:, 0], p[:, 0]) > 0.9


def test_targets_squeeze_medmnist_labels():
    t = targets(np.array([[1], [0], [4]], dtype=np.uint8), multilabel=False)
    assert t.dtype == torch.long and t.tolist() == [1, 0, 4]


def test_batches_are_reshuffled_each_epoch_and_drop_the_last_partial_one():
    x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
    batches = feature_batches(x, y, 4, seed=0)
    e1 = torch.cat([b[1] for b in batches(1)])
    e2 = torch.cat([b[1] for b in batches(2)])
    assert [len(b[1]) for b in batches(1)] == [4, 4]  # drop_last, as the study's loader
    assert len(set(e1.tolist())) == 8 and e1.tolist() != e2.tolist()
    assert torch.equal(e1, torch.cat([b[1] for b in batches(1)]))  # seeded
    seen = set().union(*(torch.cat([b[1] for b in batches(e)]).tolist() for e in range(1, 9)))
    assert seen == set(range(10))  # a fresh permutation drops different rows each epoch
