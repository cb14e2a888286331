"""Parity case for the weighted kNN monitor, as the MoCo CIFAR demo's
knn_predict computes it: top-k cosine similarities, exp(sim / T) votes per
class, the class of most weight."""
import torch
import torch.nn.functional as F


def knn(g, nq=40, nb=600, dim=16, k=25, T=0.1, classes=10):
    queries = F.normalize(torch.randn(nq, dim, generator=g), dim=1)
    bank = F.normalize(torch.randn(nb, dim, generator=g), dim=1)
    labels = torch.randint(0, classes, (nb,), generator=g)
    sim = queries @ bank.t()
    w, idx = sim.topk(k=k, dim=-1)
    lab = torch.gather(labels.expand(nq, -1), dim=-1, index=idx)
    w = (w / T).exp()
    one_hot = torch.zeros(nq * k, classes).scatter(-1, lab.view(-1, 1), 1.0)
    scores = torch.sum(one_hot.view(nq, -1, classes) * w.unsqueeze(-1), dim=1)
    return {"queries": queries, "bank": bank, "labels": labels.float(), "scores": scores,
            "pred": scores.argmax(dim=-1).float()}, {"k": str(k), "T": str(T),
                                                      "classes": str(classes)}


CASES = {"knn_monitor": knn}
