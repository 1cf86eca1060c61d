"""pathkernel.torch: bring a PyTorch model (the only module of the package
that imports torch; MATH.md section 10).

    from pathkernel.torch import Recorder, to_torch, from_torch

    rec = Recorder(model, optimizer, X, y, loss="softmax", out="run")
    for batch in batches:                      # your own loop
        optimizer.zero_grad()
        F.cross_entropy(model(X[batch]), y[batch]).backward()
        optimizer.step()
        rec.step(batch)                        # after every optimizer.step()
        scheduler.step()                       # schedulers work: the lr of each step is recorded
    run = rec.close()                          # a pathkernel.Run: explain, attribute, ...

    net = to_torch(run, step=None)             # nn.Sequential, float64, the run's weights
    spec, init = from_torch(net, input_shape)  # pathkernel.train(X, y, model=spec, init=init, ...)

Models: an nn.Sequential of nn.Linear, nn.Conv2d, nn.AvgPool2d,
nn.MaxPool2d, nn.Flatten and the activations nn.Tanh, nn.ReLU, nn.Sigmoid,
nn.Softplus, nn.GELU, nn.Identity (and Erf below), the last module an
nn.Linear; float64, or float32 recorded as float64 copies. Optimisers:
torch.optim.SGD (with or without momentum and weight decay), Adam and AdamW,
one parameter group. The loss the loop minimises must be pathkernel's:
"softmax" F.cross_entropy(out, y) (mean), "logistic"
F.binary_cross_entropy_with_logits(out[:, 0], y) (mean), "mse"
0.5 * ((out - y) ** 2).sum(1).mean().

A recorded run stores every step's weights: pathkernel cannot repeat
PyTorch's arithmetic bit for bit, so its path kernel and contributions are
computed between the recorded weights, and every replay checks that each
recorded step is the step the recorded optimiser takes from the previous
weights with that batch and learning rate; a step that is not (a clipped or
scaled gradient, another loss, a changed hyperparameter) fails the replay
with its step number. An optimizer.step() without rec.step() (or the
reverse) is caught at the next rec.step().
"""
import ctypes
import types

import numpy as np
import torch
from torch import nn

import pathkernel as _pk
from pathkernel import _capi

__all__ = ["Recorder", "to_torch", "from_torch", "Erf", "SUPPORTED_MODULES", "SUPPORTED_OPTIMIZERS"]

SUPPORTED_MODULES = ("an nn.Sequential of nn.Linear, nn.Conv2d, nn.AvgPool2d, nn.MaxPool2d, nn.Flatten and the "
                     "activations nn.Tanh, nn.ReLU, nn.Sigmoid, nn.Softplus, nn.GELU, nn.Identity, "
                     "pathkernel.torch.Erf, ending with an nn.Linear")
SUPPORTED_OPTIMIZERS = ("torch.optim.SGD (with or without momentum and weight decay; dampening 0, not nesterov), "
                        "torch.optim.Adam and torch.optim.AdamW (not amsgrad), one parameter group")


class Erf(nn.Module):
    """The erf activation (pathkernel's `erf`), which torch.nn lacks."""

    def forward(self, x):
        return torch.erf(x)


_ACTS = {nn.Tanh: "tanh", nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Softplus: "softplus", nn.GELU: "gelu",
         nn.Identity: "identity", Erf: "erf"}
_MODULES = {v: k for k, v in _ACTS.items()}

# why some modules are refused, beyond "not one of the supported"
_WHY = {
    "Dropout": "PyTorch's dropout masks cannot be replayed (pathkernel's own training has dropout:P with masks it "
               "can draw again)",
    "BatchNorm": "its batch statistics make a step depend on the whole batch at once, not a sum over examples",
    "LSTM": "recurrent layers are not among pathkernel's layers",
}


def _why(m):
    name = type(m).__name__
    for k, v in _WHY.items():
        if k in name:
            return f": {v}"
    return ""


def _pair(v, what, m, i):
    """An int from an int or a square pair; refuse others."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2 or v[0] != v[1]:
            raise ValueError(f"module {i} ({m}): {what} {v} is not square; pathkernel's windows are K x K")
        v = v[0]
    return int(v)


def _name(m):
    """nn.BatchNorm2d for torch's modules, the class name for others."""
    t = type(m)
    return f"nn.{t.__name__}" if t.__module__.startswith("torch.nn") else t.__name__


def _refuse(m, i, why):
    return ValueError(f"module {i} ({_name(m)}) is not supported{why}; pathkernel takes {SUPPORTED_MODULES}")


def _describe(model, input_shape):
    """(spec, [modules with parameters]) of an nn.Sequential, refusing what
    pathkernel does not have with the module and what is supported."""
    if type(model) is not nn.Sequential:
        raise ValueError(f"model: a {type(model).__name__} is not supported; pathkernel takes {SUPPORTED_MODULES}")
    mods = list(model)
    if not mods:
        raise ValueError("model: an empty nn.Sequential")
    shape = None
    if input_shape is not None:
        shape = tuple(int(v) for v in input_shape)
        if len(shape) != 3 or min(shape) <= 0:
            raise ValueError(f"input_shape: expected (C, H, W), got {input_shape!r}")
    spatial = any(type(m) in (nn.Conv2d, nn.AvgPool2d, nn.MaxPool2d) for m in mods)
    if spatial and shape is None:
        raise ValueError("input_shape: a model with nn.Conv2d or pooling needs the images' (C, H, W)")
    els, weighted, seen_spatial = [], [], False
    for i, m in enumerate(mods):
        t = type(m)
        last = i == len(mods) - 1
        if t is nn.Linear:
            if m.bias is None:
                raise ValueError(f"module {i} (nn.Linear(bias=False)) is not supported: pathkernel's dense layers "
                                 "have biases")
            els.append("dense" if last else f"dense:{m.out_features}")
            weighted.append(m)
        elif t is nn.Conv2d:
            if m.bias is None:
                raise ValueError(f"module {i} (nn.Conv2d(bias=False)) is not supported: pathkernel's conv2d layers "
                                 "have biases")
            k, st = _pair(m.kernel_size, "kernel_size", m, i), _pair(m.stride, "stride", m, i)
            if isinstance(m.padding, str):
                raise ValueError(f"module {i} ({m}): padding='{m.padding}': give the padding as a number")
            pad = _pair(m.padding, "padding", m, i)
            if _pair(m.dilation, "dilation", m, i) != 1 or m.groups != 1 or m.padding_mode != "zeros":
                raise ValueError(f"module {i} ({m}): dilation, groups and padding modes other than zeros are not "
                                 "supported")
            els.append(f"conv:{m.out_channels},{k}" + (f",stride={st}" if st != 1 else "") +
                       (f",pad={pad}" if pad else ""))
            weighted.append(m)
            seen_spatial = True
        elif t in (nn.AvgPool2d, nn.MaxPool2d):
            k = _pair(m.kernel_size, "kernel_size", m, i)
            st = k if m.stride is None else _pair(m.stride, "stride", m, i)
            bad = _pair(m.padding, "padding", m, i) != 0 or m.ceil_mode
            if t is nn.AvgPool2d:
                bad = bad or m.divisor_override is not None
            else:
                bad = bad or _pair(m.dilation, "dilation", m, i) != 1 or m.return_indices
            if bad:
                raise ValueError(f"module {i} ({m}): pooling with padding, ceil_mode, dilation, a divisor or "
                                 "indices is not supported")
            name = "avgpool" if t is nn.AvgPool2d else "maxpool"
            els.append(f"{name}:{k}" + (f",stride={st}" if st != k else ""))
            seen_spatial = True
        elif t is nn.Flatten:
            if m.start_dim != 1 or m.end_dim != -1:
                raise ValueError(f"module {i} ({m}): only nn.Flatten() (start_dim 1, end_dim -1) is supported")
            if seen_spatial:
                els.append("flatten")
            # before any spatial layer a flatten changes nothing of a row
        elif t in _ACTS:
            if t is nn.Softplus and (m.beta != 1 or m.threshold != 20):
                raise ValueError(f"module {i} ({m}): only nn.Softplus() with beta 1 is supported")
            if t is nn.GELU and getattr(m, "approximate", "none") != "none":
                raise ValueError(f"module {i} ({m}): only the exact nn.GELU() (approximate='none') is supported")
            els.append(_ACTS[t])
        else:
            raise _refuse(m, i, _why(m))
        if last and t is not nn.Linear:
            raise ValueError(f"module {i} ({type(m).__name__}): the last module must be an nn.Linear (the outputs "
                             "are the loss's logits or predictions)")
    if seen_spatial:
        els.insert(0, "in:{},{},{}".format(*shape))
    elif len(els) == 1:
        return "linear", weighted
    elif (len(els) % 2 and all(e.startswith("dense") for e in els[::2]) and len(set(els[1::2])) == 1
          and els[1] in _MODULES):
        # dense, act, dense, ..., dense with one activation: the perceptron spec (its fast paths)
        return "mlp:{}:{}".format(",".join(e[6:] for e in els[:-1:2]), els[1]), weighted
    return ";".join(els), weighted


def _dtype(model):
    dts = {p.dtype for p in model.parameters()}
    for i, p in enumerate(model.parameters()):
        if p.dtype not in (torch.float64, torch.float32):
            names = [n for n, _ in model.named_parameters()]
            raise ValueError(f"parameter {names[i]} is {p.dtype}: pathkernel records float64 models, and float32 "
                             "ones as float64 copies (model.double() or model.float())")
    if len(dts) != 1:
        raise ValueError(f"the model mixes dtypes {sorted(str(d) for d in dts)}: make it one (model.double())")
    return dts.pop()


def from_torch(module, input_shape=None):
    """The pathkernel model spec of an nn.Sequential (SUPPORTED_MODULES) and
    its current weights: (spec, [(W1, b1), (W2, b2), ...]), float64 in
    nn.Linear's and nn.Conv2d's layouts, one pair per module with
    parameters, so that pathkernel.train(X, y, model=spec, init=weights,
    ...) starts where the PyTorch model is. input_shape (C, H, W) is needed
    when the model has conv2d or pooling layers. A leading nn.Flatten is
    dropped (pathkernel's rows are flat already)."""
    spec, weighted = _describe(module, input_shape)
    _dtype(module)
    return spec, [(m.weight.detach().to(torch.float64).cpu().numpy().copy(),
                   m.bias.detach().to(torch.float64).cpu().numpy().copy()) for m in weighted]


def _parse(spec):
    """Elements (name, numbers, options) of a canonical pathkernel spec."""
    if spec == "linear":
        return [("dense", [], {})]
    if spec.startswith("mlp:"):
        _, widths, act = spec.split(":")
        out = []
        for h in (int(v) for v in widths.split(",") if v):
            out += [("dense", [h], {}), (act, [], {})]
        return out + [("dense", [], {})]
    if "res(" in spec:
        raise ValueError(f"model '{spec}': residual blocks have no nn.Sequential form")
    out = []
    for el in spec.split(";"):
        name, _, args = el.partition(":")
        if name == "dropout":
            out.append((name, [float(args)], {}))
            continue
        pos = [int(a) for a in args.split(",") if a and "=" not in a]
        kw = {k: int(v) for k, v in (a.split("=") for a in args.split(",") if "=" in a)}
        out.append((name, pos, kw))
    return out


def to_torch(run, step=None):
    """An nn.Sequential (float64, eval mode) holding the weights of a
    pathkernel run (a Run or a run directory) at `step` (None: the last, 0:
    the initial; as Run.weights): nn.Linear, nn.Conv2d, nn.AvgPool2d,
    nn.MaxPool2d, nn.Flatten, nn.Dropout and the activations, in the order
    of the run's spec; module N's state_dict keys are N.weight and N.bias.
    It takes the inputs as the run's rows: (n, d), or (n, C, H, W) images
    when the spec starts with in:C,H,W. (nn.Softplus is linear above 20,
    where it differs from pathkernel's softplus by less than 2.1e-9.)"""
    r = run if isinstance(run, _pk.Run) else _pk.open_run(run)
    layers = iter(r.layers(step))
    mods = []
    for name, pos, kw in _parse(r.model):
        if name == "in":
            continue   # the shape the rows have
        if name == "conv":
            W, b = next(layers)
            m = nn.Conv2d(W.shape[1], pos[0], pos[1], stride=kw.get("stride", 1), padding=kw.get("pad", 0),
                          dtype=torch.float64)
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(W))
                m.bias.copy_(torch.from_numpy(b))
            mods.append(m)
        elif name in ("avgpool", "maxpool"):
            k = pos[0]
            mods.append((nn.AvgPool2d if name == "avgpool" else nn.MaxPool2d)(k, stride=kw.get("stride", k)))
        elif name == "flatten":
            mods.append(nn.Flatten())
        elif name == "dropout":
            mods.append(nn.Dropout(pos[0]))
        elif name == "dense":
            W, b = next(layers)
            m = nn.Linear(W.shape[1], W.shape[0], dtype=torch.float64)
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(W))
                m.bias.copy_(torch.from_numpy(b))
            mods.append(m)
        elif name in _MODULES:
            mods.append(_MODULES[name]())
        else:
            raise ValueError(f"model '{r.model}': no PyTorch module for '{name}'")
    return nn.Sequential(*mods).eval()


# ------------------------------------------------------------------ recorder

def _optimizer(opt, params):
    """pk_optim fields of a supported optimiser, refusing the others by name."""
    t = type(opt)
    name = f"{t.__module__.split('.')[0]}.optim.{t.__name__}" if t.__module__.startswith("torch.optim") else t.__name__
    if t not in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW):
        raise ValueError(f"optimizer: {name} is not supported; pathkernel records {SUPPORTED_OPTIMIZERS}")
    if len(opt.param_groups) != 1:
        raise ValueError(f"optimizer: {name} with {len(opt.param_groups)} parameter groups; pathkernel records one "
                         "group holding every parameter")
    g = opt.param_groups[0]
    ps = list(g["params"])
    if len(ps) != len(params) or any(a is not b for a, b in zip(ps, params)):
        raise ValueError(f"optimizer: {name} must hold the model's parameters, all of them and in the model's order "
                         "(torch.optim.X(model.parameters(), ...))")
    for k in ("maximize", "capturable", "differentiable", "fused"):
        if g.get(k):
            raise ValueError(f"optimizer: {name}({k}=True) is not supported; pathkernel records {SUPPORTED_OPTIMIZERS}")
    if opt.state:
        raise ValueError(f"optimizer: {name} has already taken steps (its state is not empty): create the Recorder "
                         "before the first optimizer.step()")
    if t is torch.optim.SGD:
        if g["nesterov"] or g["dampening"] != 0:
            raise ValueError(f"optimizer: {name}(nesterov={g['nesterov']}, dampening={g['dampening']}) is not "
                             f"supported; pathkernel records {SUPPORTED_OPTIMIZERS}")
        kind = "momentum" if g["momentum"] != 0 else "sgd"
        return {"kind": kind, "momentum": float(g["momentum"]), "weight_decay": float(g["weight_decay"])}
    if g["amsgrad"]:
        raise ValueError(f"optimizer: {name}(amsgrad=True) is not supported; pathkernel records {SUPPORTED_OPTIMIZERS}")
    return {"kind": "adam" if t is torch.optim.Adam else "adamw", "beta1": float(g["betas"][0]),
            "beta2": float(g["betas"][1]), "eps": float(g["eps"]), "weight_decay": float(g["weight_decay"])}


def _hyper(opt):
    """What must not change while recording: the group's settings but lr."""
    return {k: v for k, v in opt.param_groups[0].items() if k not in ("params", "lr", "initial_lr")}


class Recorder:
    """Records a PyTorch training loop as a pathkernel run directory.

    Recorder(model, optimizer, X, y, loss="softmax", out="run",
    input_shape=None): model an nn.Sequential (SUPPORTED_MODULES), float64
    or float32; optimizer one of SUPPORTED_OPTIMIZERS, fresh (no step taken
    yet); X the training inputs (n, d) or images (n, C, H, W) (a tensor or
    an array) and y their targets ((n,) class indices for softmax and
    logistic, (n, k) for mse), which the loop's batches index; out the run
    directory (must not hold a run). Anything unsupported is refused here,
    with its name and what is supported.

    Call rec.step(batch) after every optimizer.step(): batch holds the
    indices into X of the examples the step's loss averaged over. It records
    the learning rate the step used (read when optimizer.step() is called,
    so a scheduler may step before or after rec.step), the weights and the
    optimiser's state after it. rec.close() finishes the run and returns it
    as a pathkernel.Run (or use `with Recorder(...) as rec:`, then rec.run).
    """

    def __init__(self, model, optimizer, X, y, loss="softmax", out="run", input_shape=None):
        Xa = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
        ya = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
        shape = input_shape if input_shape is not None else (Xa.shape[1:] if Xa.ndim == 4 else
                                                              (1,) + Xa.shape[1:] if Xa.ndim == 3 else None)
        self.spec, weighted = _describe(model, shape)
        self.dtype = _dtype(model)
        self.params = list(model.parameters())
        for i, p in enumerate(self.params):
            if not p.requires_grad:
                raise ValueError(f"parameter {i} does not require a gradient: pathkernel trains every parameter")
        opt = _optimizer(optimizer, self.params)
        self.model, self.optimizer, self.loss = model, optimizer, str(loss)
        self.kind = opt["kind"]
        x = _pk._as_matrix(_pk._flat_images(Xa), "X")
        if self.loss in ("softmax", "logistic") and ya.ndim != 1:
            raise ValueError(f"y: {self.loss} needs (n,) class indices, got shape {ya.shape}")
        yt = _pk._as_targets(ya, x.shape[0])
        self.n = x.shape[0]
        # images keep their shape (the report draws them) where the spec allows it
        img = shape is not None and (self.spec.startswith(("in:", "mlp:")) or self.spec == "linear")
        rd = _pk._RunDir(out, x, yt, tuple(shape) if img else None)
        outp = rd.path
        self.path = outp
        self._x, self._y = x, yt
        L = _pk._lib()
        o = L.pk_train_opts_defaults()
        lc = _capi.c_int()
        _pk._check(L.pk_loss_parse(self.loss.encode(), ctypes.byref(lc)))
        oc = _capi.c_int()
        _pk._check(L.pk_optim_parse(self.kind.encode(), ctypes.byref(oc)))
        self._b = [self.spec.encode(), rd.spec, rd.out, f"PyTorch {torch.__version__}".encode()]
        o.model, o.data_spec, o.out_dir = self._b[0], self._b[1], self._b[2]
        o.loss, o.optim.kind = lc.value, oc.value
        o.optim.lr = float(optimizer.param_groups[0]["lr"])
        for k in ("momentum", "beta1", "beta2", "eps", "weight_decay"):
            if k in opt:
                setattr(o.optim, k, opt[k])
        ro = L.pk_record_opts_defaults()
        ro.origin = self._b[3]
        ro.float32 = 1 if self.dtype == torch.float32 else 0
        # float32 gradients carry about 1e-6 of relative rounding; their weights' rounding is allowed on top
        ro.step_tol = 1e-3 if ro.float32 else 1e-6
        shp = tuple(shape) if img else None
        self._data = _pk._data(x, yt)
        if shp is not None:
            self._data.img_c, self._data.img_h, self._data.img_w = shp
        h = _capi.P_recorder()
        try:
            _pk._check(L.pk_record_begin(ctypes.byref(self._data), ctypes.byref(o), ctypes.byref(ro),
                                         _pk._ptr(self._weights()), ctypes.byref(h)))
        except _pk.PathkernelInputError:
            rd.refused()
            raise
        self._h = h
        self.steps = 0
        self.run = None
        self._hyper = _hyper(optimizer)
        self._calls, self._lr = 0, None
        self._wrap()

    # -- the optimiser's step, watched

    def _wrap(self):
        """Count optimizer.step() calls and read the learning rate each uses."""
        opt, rec = self.optimizer, self
        self._had_own = "step" in opt.__dict__
        self._prev = opt.step

        def step(this, *args, **kwargs):
            if rec._h is not None:
                rec._calls += 1
                rec._lr = float(this.param_groups[0]["lr"])
            return rec._prev(*args, **kwargs)

        if getattr(self._prev, "_with_counter", False):  # a scheduler's counting wrapper: still called, say so
            step._with_counter = True
        self._mine = types.MethodType(step, opt)
        opt.step = self._mine

    def _unwrap(self):
        opt = self.optimizer
        if opt.__dict__.get("step") is self._mine:   # else a scheduler wrapped it since: it passes through
            if self._had_own:
                opt.step = self._prev
            else:
                del opt.step

    def _weights(self):
        """(P,) float64: every parameter flattened in the model's order (the
        run's layout: W then b of each layer)."""
        return np.ascontiguousarray(torch.cat([p.detach().reshape(-1).to(torch.float64).cpu()
                                               for p in self.params]).numpy())

    def _state(self):
        """(S, P) float64: the momentum buffer, or Adam's first then second moments."""
        keys = {"sgd": (), "momentum": ("momentum_buffer",), "adam": ("exp_avg", "exp_avg_sq"),
                "adamw": ("exp_avg", "exp_avg_sq")}[self.kind]
        rows = []
        for k in keys:
            parts = []
            for p in self.params:
                v = self.optimizer.state.get(p, {}).get(k)
                parts.append(torch.zeros(p.numel(), dtype=torch.float64) if v is None
                             else v.detach().reshape(-1).to(torch.float64).cpu())
            rows.append(torch.cat(parts))
        if not rows:
            return None
        return np.ascontiguousarray(torch.stack(rows).numpy())

    def step(self, batch):
        """Record the step optimizer.step() just took on the examples `batch`
        (indices into X: a tensor, array or list)."""
        if self._h is None:
            raise RuntimeError("the recorder is closed")
        t = self.steps + 1
        idx = batch.detach().cpu().numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch)
        idx = idx.reshape(-1)
        if idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"step {t}: batch must hold the integer indices into X of the step's examples")
        if idx.min() < 0 or idx.max() >= self.n:
            raise ValueError(f"step {t}: batch index {int(idx.max() if idx.max() >= self.n else idx.min())} is out "
                             f"of range (X has {self.n} examples)")
        if self._calls != 1:
            calls, self._calls = self._calls, 0
            if calls == 0:
                raise RuntimeError(f"step {t}: rec.step() without an optimizer.step() since the previous one: call "
                                   "rec.step(batch) once after every optimizer.step()")
            raise RuntimeError(f"optimizer.step() was called {calls} times since rec.step() recorded step {t - 1}: "
                               f"step {t} (of the optimizer's {t - 1 + calls}) was not recorded; call rec.step(batch) "
                               "once after every optimizer.step()")
        hyper = _hyper(self.optimizer)
        if hyper != self._hyper:
            changed = sorted(k for k in set(hyper) | set(self._hyper) if hyper.get(k) != self._hyper.get(k))
            raise RuntimeError(f"step {t}: the optimiser's {', '.join(changed)} changed during training; only the "
                               "learning rate may (schedulers)")
        self._calls = 0
        w = self._weights()
        st = self._state()
        u32 = np.ascontiguousarray(idx, dtype=np.uint32)
        L = _pk._lib()
        _pk._check(L.pk_record_step(self._h, self._lr, u32.ctypes.data_as(_capi.P_u32), u32.size, _pk._ptr(w),
                                    _pk._ptr(st) if st is not None else None))
        self.steps = t

    def close(self):
        """Finish the run directory and return it opened (a pathkernel.Run
        with the training data attached); idempotent."""
        if self._h is not None:
            h, self._h = self._h, None
            self._unwrap()
            _pk._check(_pk._lib().pk_record_end(h))
            self.run = _pk.Run(self.path, _train=(self._x, self._y))
        return self.run

    def abort(self):
        """Stop without finishing: the directory stays an unfinished recording."""
        if self._h is not None:
            h, self._h = self._h, None
            self._unwrap()
            _pk._lib().pk_record_free(h)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self):
        try:
            self.abort()
        except Exception:
            pass

    def __repr__(self):
        return f"Recorder({str(self.path)!r}, model={self.spec!r}, optim={self.kind!r}, steps={self.steps})"
