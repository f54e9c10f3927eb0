//! The Inception-v3 of pytorch-fid (`InceptionV3([3])` with `use_fid_inception=True`): the
//! network whose 2048-d pool3 features FID and KID are computed on, with TensorFlow's FID
//! weights (`pt_inception-2015-12-05-6726825d.pth`) when the user has them.
//!
//! Inference only, so it is written with libtorch's ops directly rather than the DP-aware layers
//! (it is never trained, and it needs asymmetric 1×7 / 7×1 kernels and BatchNorm). Parameter
//! names are those of pytorch-fid's state dict (torchvision's `Inception3` names:
//! `Mixed_6b.branch7x7_2.conv.weight`, `Conv2d_1a_3x3.bn.running_var`, ...), so a user's
//! weights file loads unchanged once converted to safetensors (see [`CONVERT_HINT`]). The file's
//! `fc.*` tensors (the 1008-way classifier, unused for pool3 features) and BatchNorm
//! `num_batches_tracked` counters are accepted and ignored.
//!
//! What pytorch-fid does and this reproduces: images in [0, 1] (grey images repeated to three
//! channels, as its `convert("RGB")` does) are resized to 299×299 bilinearly with
//! `align_corners=False` and no antialiasing, mapped to [-1, 1] by `2x - 1`, and run through the
//! stem and the `Mixed_*` blocks, whose FID variants differ from torchvision's: average pools in
//! `Mixed_5*`, `Mixed_6b..e` and `Mixed_7b` exclude padding (TensorFlow's rule) and `Mixed_7c`
//! pools by max. BatchNorm eps is 0.001.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::nn::{self, VarStore};
use tch::{Device, Kind, Tensor};

/// Side of the square images the network sees.
pub const INPUT_SIZE: i64 = 299;
/// Length of the pool3 feature vector.
pub const FEATURES: i64 = 2048;

/// How a user turns pytorch-fid's `.pth` download into the safetensors file `--inception` reads.
pub const CONVERT_HINT: &str = "convert pytorch-fid's weights once with Python: \
python -c \"import torch; from safetensors.torch import save_file; \
sd = torch.load('pt_inception-2015-12-05-6726825d.pth', map_location='cpu'); \
save_file({k: v.contiguous() for k, v in sd.items()}, 'pt_inception-2015-12-05.safetensors')\"";

/// Convolution (no bias) → BatchNorm (eps 0.001) → ReLU: torchvision's `BasicConv2d`.
#[derive(Debug)]
struct BasicConv {
    weight: Tensor,
    bn: nn::BatchNorm,
    stride: [i64; 2],
    padding: [i64; 2],
}

impl BasicConv {
    fn new(
        p: nn::Path,
        cin: i64,
        cout: i64,
        kernel: [i64; 2],
        stride: i64,
        padding: [i64; 2],
    ) -> Self {
        let weight = (&p / "conv").zeros("weight", &[cout, cin, kernel[0], kernel[1]]);
        let bn = nn::batch_norm2d(
            &p / "bn",
            cout,
            nn::BatchNormConfig {
                eps: 0.001,
                ..Default::default()
            },
        );
        Self {
            weight,
            bn,
            stride: [stride, stride],
            padding,
        }
    }

    /// A square `k×k` convolution with `pad` on every side.
    fn square(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, pad: i64) -> Self {
        Self::new(p, cin, cout, [k, k], stride, [pad, pad])
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let y = x.conv2d(
            &self.weight,
            None::<Tensor>,
            self.stride,
            self.padding,
            [1, 1],
            1,
        );
        nn::ModuleT::forward_t(&self.bn, &y, false).relu()
    }
}

/// 3×3 stride-1 average pool that leaves the zero padding out of the mean (TensorFlow's).
fn avg_pool_same(x: &Tensor) -> Tensor {
    x.avg_pool2d([3, 3], [1, 1], [1, 1], false, false, None)
}

/// 3×3 pool with stride 2 and no padding, as between the stem's stages and in the reductions.
fn max_pool_reduce(x: &Tensor) -> Tensor {
    x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false)
}

/// `FIDInceptionA` (`Mixed_5b..d`).
#[derive(Debug)]
struct BlockA {
    b1: BasicConv,
    b5: [BasicConv; 2],
    b3: [BasicConv; 3],
    pool: BasicConv,
}

impl BlockA {
    fn new(p: nn::Path, cin: i64, pool_features: i64) -> Self {
        let c = |name: &str, i, o, k, pad| BasicConv::square(&p / name, i, o, k, 1, pad);
        Self {
            b1: c("branch1x1", cin, 64, 1, 0),
            b5: [
                c("branch5x5_1", cin, 48, 1, 0),
                c("branch5x5_2", 48, 64, 5, 2),
            ],
            b3: [
                c("branch3x3dbl_1", cin, 64, 1, 0),
                c("branch3x3dbl_2", 64, 96, 3, 1),
                c("branch3x3dbl_3", 96, 96, 3, 1),
            ],
            pool: c("branch_pool", cin, pool_features, 1, 0),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        Tensor::cat(
            &[
                self.b1.forward(x),
                chain(&self.b5, x),
                chain(&self.b3, x),
                self.pool.forward(&avg_pool_same(x)),
            ],
            1,
        )
    }
}

/// torchvision's `InceptionB` (`Mixed_6a`, a grid reduction 35 → 17).
#[derive(Debug)]
struct BlockB {
    b3: BasicConv,
    b3dbl: [BasicConv; 3],
}

impl BlockB {
    fn new(p: nn::Path, cin: i64) -> Self {
        let c = |name: &str, i, o, k, s, pad| BasicConv::square(&p / name, i, o, k, s, pad);
        Self {
            b3: c("branch3x3", cin, 384, 3, 2, 0),
            b3dbl: [
                c("branch3x3dbl_1", cin, 64, 1, 1, 0),
                c("branch3x3dbl_2", 64, 96, 3, 1, 1),
                c("branch3x3dbl_3", 96, 96, 3, 2, 0),
            ],
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        Tensor::cat(
            &[
                self.b3.forward(x),
                chain(&self.b3dbl, x),
                max_pool_reduce(x),
            ],
            1,
        )
    }
}

/// `FIDInceptionC` (`Mixed_6b..e`), with factorised 7×7 convolutions.
#[derive(Debug)]
struct BlockC {
    b1: BasicConv,
    b7: [BasicConv; 3],
    b7dbl: [BasicConv; 5],
    pool: BasicConv,
}

impl BlockC {
    fn new(p: nn::Path, cin: i64, c7: i64) -> Self {
        let one = |name: &str, o| BasicConv::square(&p / name, cin, o, 1, 1, 0);
        let row = |name: &str, i, o| BasicConv::new(&p / name, i, o, [1, 7], 1, [0, 3]);
        let col = |name: &str, i, o| BasicConv::new(&p / name, i, o, [7, 1], 1, [3, 0]);
        Self {
            b1: one("branch1x1", 192),
            b7: [
                one("branch7x7_1", c7),
                row("branch7x7_2", c7, c7),
                col("branch7x7_3", c7, 192),
            ],
            b7dbl: [
                one("branch7x7dbl_1", c7),
                col("branch7x7dbl_2", c7, c7),
                row("branch7x7dbl_3", c7, c7),
                col("branch7x7dbl_4", c7, c7),
                row("branch7x7dbl_5", c7, 192),
            ],
            pool: one("branch_pool", 192),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        Tensor::cat(
            &[
                self.b1.forward(x),
                chain(&self.b7, x),
                chain(&self.b7dbl, x),
                self.pool.forward(&avg_pool_same(x)),
            ],
            1,
        )
    }
}

/// torchvision's `InceptionD` (`Mixed_7a`, a grid reduction 17 → 8).
#[derive(Debug)]
struct BlockD {
    b3: [BasicConv; 2],
    b7x3: [BasicConv; 4],
}

impl BlockD {
    fn new(p: nn::Path, cin: i64) -> Self {
        let c = |name: &str, i, o, k: [i64; 2], s, pad: [i64; 2]| {
            BasicConv::new(&p / name, i, o, k, s, pad)
        };
        Self {
            b3: [
                c("branch3x3_1", cin, 192, [1, 1], 1, [0, 0]),
                c("branch3x3_2", 192, 320, [3, 3], 2, [0, 0]),
            ],
            b7x3: [
                c("branch7x7x3_1", cin, 192, [1, 1], 1, [0, 0]),
                c("branch7x7x3_2", 192, 192, [1, 7], 1, [0, 3]),
                c("branch7x7x3_3", 192, 192, [7, 1], 1, [3, 0]),
                c("branch7x7x3_4", 192, 192, [3, 3], 2, [0, 0]),
            ],
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        Tensor::cat(
            &[chain(&self.b3, x), chain(&self.b7x3, x), max_pool_reduce(x)],
            1,
        )
    }
}

/// The pool branch of an E block: `FIDInceptionE_1` averages without padding, `FIDInceptionE_2`
/// takes the max (pytorch-fid's port of a quirk of the TensorFlow graph).
#[derive(Debug, Clone, Copy)]
enum EPool {
    Average,
    Max,
}

/// `FIDInceptionE_1` / `FIDInceptionE_2` (`Mixed_7b`, `Mixed_7c`), with split 1×3 / 3×1 outputs.
#[derive(Debug)]
struct BlockE {
    b1: BasicConv,
    b3_1: BasicConv,
    b3_2: [BasicConv; 2],
    b3dbl_12: [BasicConv; 2],
    b3dbl_3: [BasicConv; 2],
    pool: BasicConv,
    pool_kind: EPool,
}

impl BlockE {
    fn new(p: nn::Path, cin: i64, pool_kind: EPool) -> Self {
        let c = |name: &str, i, o, k: [i64; 2], pad: [i64; 2]| {
            BasicConv::new(&p / name, i, o, k, 1, pad)
        };
        let split = |a: &str, b: &str| {
            [
                c(a, 384, 384, [1, 3], [0, 1]),
                c(b, 384, 384, [3, 1], [1, 0]),
            ]
        };
        Self {
            b1: c("branch1x1", cin, 320, [1, 1], [0, 0]),
            b3_1: c("branch3x3_1", cin, 384, [1, 1], [0, 0]),
            b3_2: split("branch3x3_2a", "branch3x3_2b"),
            b3dbl_12: [
                c("branch3x3dbl_1", cin, 448, [1, 1], [0, 0]),
                c("branch3x3dbl_2", 448, 384, [3, 3], [1, 1]),
            ],
            b3dbl_3: split("branch3x3dbl_3a", "branch3x3dbl_3b"),
            pool: c("branch_pool", cin, 192, [1, 1], [0, 0]),
            pool_kind,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let both = |pair: &[BasicConv; 2], h: &Tensor| {
            Tensor::cat(&[pair[0].forward(h), pair[1].forward(h)], 1)
        };
        let pooled = match self.pool_kind {
            EPool::Average => avg_pool_same(x),
            EPool::Max => x.max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false),
        };
        Tensor::cat(
            &[
                self.b1.forward(x),
                both(&self.b3_2, &self.b3_1.forward(x)),
                both(&self.b3dbl_3, &chain(&self.b3dbl_12, x)),
                self.pool.forward(&pooled),
            ],
            1,
        )
    }
}

/// Applies `convs` one after the other.
fn chain(convs: &[BasicConv], x: &Tensor) -> Tensor {
    convs
        .iter()
        .fold(x.shallow_clone(), |h, conv| conv.forward(&h))
}

/// pytorch-fid's FID Inception-v3 up to the 2048-d pool3 features.
#[derive(Debug)]
pub struct InceptionV3 {
    /// The weights, named as in pytorch-fid's state dict (without `fc.*` and
    /// `num_batches_tracked`).
    pub vs: VarStore,
    stem: [BasicConv; 5],
    mixed_5: [BlockA; 3],
    mixed_6a: BlockB,
    mixed_6: [BlockC; 4],
    mixed_7a: BlockD,
    mixed_7: [BlockE; 2],
}

impl InceptionV3 {
    /// The network with zero weights and identity BatchNorm statistics on `device`; load
    /// weights with [`InceptionV3::load`] or [`InceptionV3::load_tensors`].
    pub fn new(device: Device) -> Self {
        let vs = VarStore::new(device);
        let r = vs.root();
        let sq = |name: &str, i, o, k, s, pad| BasicConv::square(&r / name, i, o, k, s, pad);
        let stem = [
            sq("Conv2d_1a_3x3", 3, 32, 3, 2, 0),
            sq("Conv2d_2a_3x3", 32, 32, 3, 1, 0),
            sq("Conv2d_2b_3x3", 32, 64, 3, 1, 1),
            sq("Conv2d_3b_1x1", 64, 80, 1, 1, 0),
            sq("Conv2d_4a_3x3", 80, 192, 3, 1, 0),
        ];
        let mixed_5 = [
            BlockA::new(&r / "Mixed_5b", 192, 32),
            BlockA::new(&r / "Mixed_5c", 256, 64),
            BlockA::new(&r / "Mixed_5d", 288, 64),
        ];
        let mixed_6a = BlockB::new(&r / "Mixed_6a", 288);
        let mixed_6 = [
            BlockC::new(&r / "Mixed_6b", 768, 128),
            BlockC::new(&r / "Mixed_6c", 768, 160),
            BlockC::new(&r / "Mixed_6d", 768, 160),
            BlockC::new(&r / "Mixed_6e", 768, 192),
        ];
        let mixed_7a = BlockD::new(&r / "Mixed_7a", 768);
        let mixed_7 = [
            BlockE::new(&r / "Mixed_7b", 1280, EPool::Average),
            BlockE::new(&r / "Mixed_7c", 2048, EPool::Max),
        ];
        let mut vs = vs;
        vs.freeze();
        Self {
            vs,
            stem,
            mixed_5,
            mixed_6a,
            mixed_6,
            mixed_7a,
            mixed_7,
        }
    }

    /// The network with the weights of the safetensors `file` (pytorch-fid's state dict,
    /// converted as [`CONVERT_HINT`] says). Errors name the file and what is wrong with it.
    pub fn load(file: &Path, device: Device) -> Result<Self> {
        let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
        if matches!(ext, "pth" | "pt" | "bin") {
            bail!(
                "{}: a PyTorch pickle, which dpsynth cannot read (libtorch's C++ loaders do not \
                 read Python's torch.save of a state dict); {CONVERT_HINT}",
                file.display()
            );
        }
        if !file.is_file() {
            bail!("{}: no such file (the Inception weights)", file.display());
        }
        let tensors = Tensor::read_safetensors(file)
            .with_context(|| format!("{}: not a readable safetensors file", file.display()))?;
        let net = Self::new(device);
        net.load_tensors(tensors.into_iter().collect())
            .with_context(|| format!("{}: not pytorch-fid's Inception weights", file.display()))?;
        Ok(net)
    }

    /// Copies named tensors into the weights: every weight must be there with its shape;
    /// `fc.*` and `*.num_batches_tracked` are ignored, any other extra name is an error.
    pub fn load_tensors(&self, tensors: BTreeMap<String, Tensor>) -> Result<()> {
        let ignored = |k: &str| k.starts_with("fc.") || k.ends_with(".num_batches_tracked");
        let vars: BTreeMap<String, Tensor> = self.vs.variables().into_iter().collect();
        let missing: Vec<&str> = vars
            .keys()
            .filter(|k| !tensors.contains_key(*k))
            .map(String::as_str)
            .collect();
        let extra: Vec<&str> = tensors
            .keys()
            .filter(|k| !vars.contains_key(*k) && !ignored(k))
            .map(String::as_str)
            .collect();
        let first = |v: &[&str]| v.iter().take(5).copied().collect::<Vec<_>>().join(", ");
        if !missing.is_empty() {
            bail!(
                "{} tensor(s) missing, e.g. {}",
                missing.len(),
                first(&missing)
            );
        }
        if !extra.is_empty() {
            bail!(
                "{} unexpected tensor(s), e.g. {}",
                extra.len(),
                first(&extra)
            );
        }
        for (name, var) in &vars {
            let t = &tensors[name];
            if t.size() != var.size() || !t.is_floating_point() {
                bail!(
                    "tensor `{name}` is {:?} {:?}, expected float {:?}",
                    t.kind(),
                    t.size(),
                    var.size()
                );
            }
        }
        tch::no_grad(|| {
            for (name, var) in &vars {
                var.shallow_clone().copy_(&tensors[name]);
            }
        });
        Ok(())
    }

    /// pool3 features `[N, 2048]` (float) of images `[N, C, H, W]` in [0, 1], C = 1 or 3, any
    /// size: resized to 299×299 and normalised as pytorch-fid does.
    pub fn features(&self, images: &Tensor) -> Result<Tensor> {
        let size = images.size();
        if size.len() != 4 || !(size[1] == 1 || size[1] == 3) {
            bail!("Inception features need images [N, 1 or 3, H, W], got {size:?}");
        }
        let _guard = tch::no_grad_guard();
        let mut x = images.to_kind(Kind::Float).to_device(self.vs.device());
        if size[1] == 1 {
            x = x.repeat([1, 3, 1, 1]);
        }
        let x = x.upsample_bilinear2d([INPUT_SIZE, INPUT_SIZE], false, None, None) * 2.0 - 1.0;
        let [c1a, c2a, c2b, c3b, c4a] = &self.stem;
        let mut h = max_pool_reduce(&c2b.forward(&c2a.forward(&c1a.forward(&x))));
        h = max_pool_reduce(&c4a.forward(&c3b.forward(&h)));
        for block in &self.mixed_5 {
            h = block.forward(&h);
        }
        h = self.mixed_6a.forward(&h);
        for block in &self.mixed_6 {
            h = block.forward(&h);
        }
        h = self.mixed_7a.forward(&h);
        for block in &self.mixed_7 {
            h = block.forward(&h);
        }
        Ok(h.adaptive_avg_pool2d([1, 1]).flatten(1, -1))
    }
}
