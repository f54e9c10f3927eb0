//! The U-Net, class-conditional or unconditional: diffusers' `UNet2DModel` on the DP-aware layers.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use tch::{nn, Device, Kind, Tensor};

use super::attention::Attention;
use super::blocks::{BlockCommon, DownBlock, MidBlock, UpBlock};
use super::config::{DownBlockKind, TimeScaleShift, UNetConfig, UpBlockKind};
use super::embeddings::{TimestepEmbedding, Timesteps};
use super::resnet::{ResnetBlock2D, ResnetSpec};
use super::weights;
use crate::dp::layers::{Conv2d, ConvConfig, Embedding, GroupNorm, Linear};

/// File name of the weights in a model folder (as diffusers).
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";
/// File name of the config in a model folder (as diffusers).
pub const CONFIG_FILE: &str = "config.json";

/// Where an adaptable layer sits in the U-Net.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// A 3 × 3 or shortcut conv of a ResNet block.
    ResnetConv,
    /// An attention projection.
    Attention,
    /// The time-embedding MLP or a block's time projection.
    TimeEmbedding,
}

/// A mutable handle to an adaptable layer.
pub enum LayerMut<'a> {
    /// A convolution.
    Conv(&'a mut Conv2d),
    /// A linear layer.
    Linear(&'a mut Linear),
}

/// A U-Net that predicts the noise ε of `x_t` given the timestep and a class label.
///
/// Every parameter lives in [`UNet::vs`] under its diffusers `state_dict` key, e.g.
/// `down_blocks.1.attentions.0.to_q.weight`, so [`UNet::load`]/[`UNet::save`] interchange
/// folders with `UNet2DModel.from_pretrained`/`save_pretrained`.
#[derive(Debug)]
pub struct UNet {
    /// The parameters.
    pub vs: nn::VarStore,
    config: UNetConfig,
    /// 3×3 conv from the image to `block_out_channels[0]`.
    pub conv_in: Conv2d,
    /// Sinusoidal timestep features (no parameters).
    pub time_proj: Timesteps,
    /// MLP on the timestep features.
    pub time_embedding: TimestepEmbedding,
    /// Learned class table added to the time embedding (`None`: unconditional).
    pub class_embedding: Option<Embedding>,
    /// Down path, finest level first.
    pub down_blocks: Vec<DownBlock>,
    /// Bottleneck.
    pub mid_block: Option<MidBlock>,
    /// Up path, coarsest level first.
    pub up_blocks: Vec<UpBlock>,
    /// Output GroupNorm.
    pub conv_norm_out: GroupNorm,
    /// 3×3 conv to `out_channels`.
    pub conv_out: Conv2d,
}

impl UNet {
    /// A randomly initialised (PyTorch default init) U-Net on `device`.
    pub fn new(config: UNetConfig, device: Device) -> Result<Self> {
        config.validate()?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let cfg = &config;
        let ch = &cfg.block_out_channels;
        let n = ch.len();
        let temb_dim = cfg.time_embed_dim();
        let time_scale_shift = cfg.time_scale_shift()?;
        let common = BlockCommon {
            resnet: ResnetSpec {
                in_channels: 0,
                out_channels: 0,
                temb_channels: temb_dim,
                groups: cfg.norm_num_groups,
                eps: cfg.norm_eps,
                act: cfg.activation()?,
                time_scale_shift,
                output_scale_factor: 1.0,
            },
            attention_head_dim: cfg.attention_head_dim,
        };

        let conv_in = Conv2d::new(
            &root / "conv_in",
            cfg.in_channels,
            ch[0],
            ConvConfig::same(3),
            true,
        );
        let time_proj = Timesteps {
            dim: ch[0],
            flip_sin_to_cos: cfg.flip_sin_to_cos,
            freq_shift: cfg.freq_shift,
        };
        let time_embedding = TimestepEmbedding::new(&root / "time_embedding", ch[0], temb_dim);
        let class_embedding = cfg
            .num_class_embeds
            .map(|k| Embedding::new(&root / "class_embedding", k, temb_dim));

        let down_blocks = cfg
            .down_blocks()?
            .into_iter()
            .enumerate()
            .map(|(i, kind)| {
                DownBlock::new(
                    &root / "down_blocks" / i,
                    &common,
                    cfg.layers_per_block,
                    if i == 0 { ch[0] } else { ch[i - 1] },
                    ch[i],
                    kind == DownBlockKind::Attn,
                    i + 1 < n,
                    cfg.downsample_padding,
                )
            })
            .collect();

        let mid_block = cfg.mid_block_type.as_ref().map(|_| {
            let attn_groups = cfg.attn_norm_num_groups.or(match time_scale_shift {
                TimeScaleShift::Default => Some(cfg.norm_num_groups),
                TimeScaleShift::ScaleShift => None,
            });
            MidBlock::new(
                &root / "mid_block",
                &common,
                ch[n - 1],
                cfg.mid_block_scale_factor,
                cfg.add_attention,
                attn_groups,
            )
        });

        let up_blocks = cfg
            .up_blocks()?
            .into_iter()
            .enumerate()
            .map(|(i, kind)| {
                let rev = |j: usize| ch[n - 1 - j];
                UpBlock::new(
                    &root / "up_blocks" / i,
                    &common,
                    cfg.layers_per_block + 1,
                    rev((i + 1).min(n - 1)),
                    rev(i.saturating_sub(1)),
                    rev(i),
                    kind == UpBlockKind::Attn,
                    i + 1 < n,
                )
            })
            .collect();

        let conv_norm_out = GroupNorm::new(
            &root / "conv_norm_out",
            cfg.norm_num_groups,
            ch[0],
            cfg.norm_eps,
        );
        let conv_out = Conv2d::new(
            &root / "conv_out",
            ch[0],
            cfg.out_channels,
            ConvConfig::same(3),
            true,
        );
        Ok(Self {
            vs,
            config,
            conv_in,
            time_proj,
            time_embedding,
            class_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
        })
    }

    /// Loads `config.json` and `diffusion_pytorch_model.safetensors` from a model folder (one
    /// written by [`UNet::save`] or by diffusers' `save_pretrained`).
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let config = UNetConfig::load(&dir.join(CONFIG_FILE))?;
        let unet = Self::new(config, device)
            .with_context(|| format!("in U-Net config {}", dir.join(CONFIG_FILE).display()))?;
        unet.load_weights(&dir.join(WEIGHTS_FILE))?;
        Ok(unet)
    }

    /// Replaces the parameters with those of a safetensors file holding exactly this model's
    /// tensors (names and shapes checked; the error names the tensor and the file).
    pub fn load_weights(&self, file: &Path) -> Result<()> {
        weights::load_safetensors(&self.vs, file)
    }

    /// Writes `config.json` and `diffusion_pytorch_model.safetensors` into `dir` (created if
    /// needed), each atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create model folder {}", dir.display()))?;
        weights::save_safetensors(&self.vs, &dir.join(WEIGHTS_FILE))?;
        let json = self.config.to_json()?;
        let path = dir.join(CONFIG_FILE);
        crate::fsutil::write_atomic(&path, json.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Calls `f` on every layer an adapter may wrap, with the kind of place it sits in: the
    /// convs of ResNet blocks, the attention projections, and the time-embedding linears (the
    /// MLP and each block's projection). Used to attach LoRA/LoDA adapters.
    pub fn for_each_adaptable(&mut self, f: &mut dyn FnMut(Site, LayerMut<'_>)) {
        let resnet = |r: &mut ResnetBlock2D, f: &mut dyn FnMut(Site, LayerMut<'_>)| {
            f(Site::ResnetConv, LayerMut::Conv(&mut r.conv1));
            f(Site::ResnetConv, LayerMut::Conv(&mut r.conv2));
            if let Some(c) = r.conv_shortcut.as_mut() {
                f(Site::ResnetConv, LayerMut::Conv(c));
            }
            f(Site::TimeEmbedding, LayerMut::Linear(&mut r.time_emb_proj));
        };
        let attention = |a: &mut Attention, f: &mut dyn FnMut(Site, LayerMut<'_>)| {
            for l in [&mut a.to_q, &mut a.to_k, &mut a.to_v, &mut a.to_out] {
                f(Site::Attention, LayerMut::Linear(l));
            }
        };
        f(
            Site::TimeEmbedding,
            LayerMut::Linear(&mut self.time_embedding.linear_1),
        );
        f(
            Site::TimeEmbedding,
            LayerMut::Linear(&mut self.time_embedding.linear_2),
        );
        for b in &mut self.down_blocks {
            b.resnets.iter_mut().for_each(|r| resnet(r, f));
            b.attentions.iter_mut().for_each(|a| attention(a, f));
        }
        if let Some(m) = self.mid_block.as_mut() {
            m.resnets.iter_mut().for_each(|r| resnet(r, f));
            if let Some(a) = m.attention.as_mut() {
                attention(a, f);
            }
        }
        for b in &mut self.up_blocks {
            b.resnets.iter_mut().for_each(|r| resnet(r, f));
            b.attentions.iter_mut().for_each(|a| attention(a, f));
        }
    }

    /// The validated config.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Device of the parameters.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Number of classes including the null class (`num_class_embeds`); `None` when unconditional.
    pub fn num_class_embeds(&self) -> Option<i64> {
        self.config.num_class_embeds
    }

    /// Index of the "null" class used for classifier-free guidance: the last row of the class
    /// table. `None` when unconditional.
    pub fn null_class(&self) -> Option<i64> {
        self.config.num_class_embeds.map(|k| k - 1)
    }

    /// `(channels, height, width)` of the images the model was configured for, if
    /// `sample_size` is set.
    pub fn sample_shape(&self) -> Option<[i64; 3]> {
        self.config.sample_shape()
    }

    /// Checks the shapes, kinds and label range of [`UNet::forward`]'s inputs, so bad input is
    /// an error rather than a libtorch panic. Reads the labels back to check their range.
    pub fn check_input(&self, x: &Tensor, t: &Tensor, class_labels: &Tensor) -> Result<()> {
        let size = x.size();
        ensure!(
            size.len() == 4 && size[1] == self.config.in_channels,
            "U-Net input must be [B, {}, H, W], got {size:?}",
            self.config.in_channels
        );
        let f = 1i64 << (self.config.block_out_channels.len() - 1);
        ensure!(
            size[2] % f == 0 && size[3] % f == 0,
            "U-Net input height and width must be multiples of {f}, got {}x{}",
            size[2],
            size[3]
        );
        ensure!(
            t.numel() == 1 || t.size() == [size[0]],
            "timesteps must be a scalar or [{}], got {:?}",
            size[0],
            t.size()
        );
        if let Some(k) = self.config.num_class_embeds {
            ensure!(
                class_labels.size() == [size[0]],
                "class labels must be [{}], got {:?}",
                size[0],
                class_labels.size()
            );
            ensure!(
                matches!(class_labels.kind(), Kind::Int64 | Kind::Int),
                "class labels must be integers, got {:?}",
                class_labels.kind()
            );
            if size[0] > 0 {
                let lo = class_labels.min().int64_value(&[]);
                let hi = class_labels.max().int64_value(&[]);
                ensure!(
                    lo >= 0 && hi < k,
                    "class labels must be in 0..{k} (the last is the null class), got {lo}..={hi}"
                );
            }
        }
        Ok(())
    }

    /// Predicts ε for noisy images `x` `[B, C, H, W]` at timesteps `t` (`[B]` or a scalar,
    /// integer or float) with `class_labels` `[B]` (int64; the null class for unconditional
    /// rows). An unconditional model (no `num_class_embeds`) ignores the labels.
    ///
    /// Shapes are not checked here (libtorch panics on a mismatch); see [`UNet::check_input`].
    pub fn forward(&self, x: &Tensor, t: &Tensor, class_labels: &Tensor) -> Tensor {
        let b = x.size()[0];
        let x = if self.config.center_input_sample {
            x * 2.0 - 1.0
        } else {
            x.shallow_clone()
        };
        let t = if t.numel() == 1 {
            t.reshape([1]).expand([b], false)
        } else {
            t.shallow_clone()
        };
        // no in-place ops anywhere in the forward: the DP tape holds layer outputs (here
        // linear_2's) whose gradients it takes later
        // the sinusoid is computed in float32; follow the model's dtype (float64 in tests)
        let temb = self
            .time_embedding
            .forward(&self.time_proj.forward(&t).to_kind(x.kind()));
        let temb = match &self.class_embedding {
            Some(table) => temb + table.forward(class_labels),
            None => temb,
        };

        let mut h = self.conv_in.forward(&x);
        let mut skips = vec![h.shallow_clone()];
        for block in &self.down_blocks {
            h = block.forward(&h, &temb, &mut skips);
        }
        if let Some(mid) = &self.mid_block {
            h = mid.forward(&h, &temb);
        }
        for block in &self.up_blocks {
            h = block.forward(&h, &temb, &mut skips);
        }
        let h = self.conv_norm_out.forward(&h).silu();
        self.conv_out.forward(&h)
    }
}
