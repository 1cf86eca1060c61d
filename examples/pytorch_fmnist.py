# A PyTorch training loop on Fashion-MNIST, recorded by pathkernel, and one
# test prediction explained exactly by the training images.
import torch
import torch.nn.functional as F
from torch import nn

import pathkernel as pk
from pathkernel.torch import Recorder

torch.manual_seed(0)
train = pk.load_data("fashion-mnist:train", first=2000)   # or any tensors of your own
test = pk.load_data("fashion-mnist:test", first=2)
X = torch.from_numpy(train.x).reshape(-1, 1, 28, 28)       # (2000, 1, 28, 28) float64
y = torch.from_numpy(train.y).long()

model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
                      nn.Linear(6 * 14 * 14, 10)).double()
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=30, gamma=0.5)

rec = Recorder(model, opt, X, y, loss="softmax", out="fmnist-run")
for epoch in range(2):
    for batch in torch.randperm(len(X)).split(100):
        opt.zero_grad()
        loss = F.cross_entropy(model(X[batch]), y[batch])
        loss.backward()
        opt.step()
        rec.step(batch)                                     # after every optimizer.step()
        sched.step()
run = rec.close()
print(run)
print(f"last batch loss {loss.item():.4f}, learning rate {run.lrs()[0]:g} -> {run.lrs()[-1]:g}")

Xq = test.x.reshape(-1, 1, 28, 28)
e = run.explain(Xq, quad="gl4", kernel=None)   # pred = bias + sum_i contrib_i + regularisation
print(f"{len(Xq)} queries x {run.n_train} training images, max relative error < 1e-9: {e.max_rel_err < 1e-9}")
print(f"every recorded step is Adam's to < 1e-12: {run.step_residual()[0] < 1e-12}")

names = train.classes
for a in run.attribute(Xq, top=5, quad="gl4"):
    print(f"test image {a.query} ({names[int(test.y[a.query])]}): logit of {names[a.cls]} "
          f"{a.pred:.3f} = bias {a.bias:.3f} + contributions {a.total:.3f}")
    for i, c in zip(a.proponents, a.proponent_contrib):
        print(f"  proponent {i:4d}  {names[int(train.y[i])]:<11s} {c:+.4f}")
