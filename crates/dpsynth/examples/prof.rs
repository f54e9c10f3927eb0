use dpsynth::dp::{clip, grad_sample, tape, Strategy};
use dpsynth::nn::classifier::{Classifier, ClassifierConfig};
use tch::{nn, Device, Kind, Reduction, Tensor};

#[derive(Clone, Copy)]
struct Cpu(f64);
fn cpu_ns() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64
}
impl Cpu {
    fn now() -> Cpu {
        Cpu(cpu_ns())
    }
}
fn ms(t: Cpu) -> f64 {
    (cpu_ns() - t.0) / 1e6
}

fn main() {
    if let Ok(t) = std::env::var("DPT") {
        tch::set_num_threads(t.parse().unwrap());
    }
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Classifier::new(&vs.root(), ClassifierConfig::mnist()).unwrap();
    let params = vs.trainable_variables();
    let x = Tensor::randn([256, 1, 28, 28], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(10, [256], (Kind::Int64, Device::Cpu));
    let strat = match std::env::args().nth(1).as_deref() {
        Some("ghost") => Strategy::Ghost,
        Some("mat") => Strategy::Materialise,
        _ => Strategy::Auto,
    };
    for rep in 0..12 {
        let t = Cpu::now();
        let l =
            model
                .forward(&x)
                .cross_entropy_loss::<Tensor>(&y, None, Reduction::None, -100, 0.0);
        let f = ms(t);
        let t = Cpu::now();
        l.mean(Kind::Float).backward();
        let b = ms(t);
        for p in &params {
            let mut p = p.shallow_clone();
            p.zero_grad();
        }
        let t = Cpu::now();
        let (l, entries) = tape::record_forward(|| {
            model
                .forward(&x)
                .cross_entropy_loss::<Tensor>(&y, None, Reduction::None, -100, 0.0)
        });
        let fr = ms(t);
        let t = Cpu::now();
        let outs: Vec<&Tensor> = entries.iter().map(|e| &e.output).collect();
        let gys = Tensor::run_backward(&[l.sum(Kind::Float)], &outs, false, false);
        let br = ms(t);
        let _g = tch::no_grad_guard();
        let mut per = vec![];
        let mut lgs = vec![];
        for (e, gy) in entries.iter().zip(&gys) {
            let t = Cpu::now();
            let lg = grad_sample::per_sample(e, gy, 1, strat).unwrap();
            let _ = lg.sq_norms().unwrap().sum(Kind::Float).double_value(&[]);
            per.push(format!(
                "{:?}:{:.1} {:?}",
                e.kind,
                ms(t),
                if rep == 11 { e.input.stride() } else { vec![] }
            ));
            lgs.push(lg);
        }
        let t = Cpu::now();
        let tot = lgs
            .iter()
            .map(|l| l.sq_norms().unwrap())
            .reduce(|a, b| a + b)
            .unwrap();
        let c = clip::clip_factors(&tot, 1.0);
        let mut sums = vec![];
        for lg in &lgs {
            let t = Cpu::now();
            if let Some(w) = &lg.weight {
                let s = w.clipped_sum(&c).unwrap();
                let _ = s.sum(Kind::Float).double_value(&[]);
            }
            if let Some(w) = &lg.bias {
                let _ = w.clipped_sum(&c).unwrap();
            }
            sums.push(format!("{:.1}", ms(t)));
        }
        let cs = ms(t);
        if rep >= 6 {
            println!("np: fwd {f:.1} bwd {b:.1} | dp: fwd {fr:.1} bwd-to-outputs {br:.1} rules [{}] sums {cs:.1} [{}]", per.join(" "), sums.join(" "));
        }
    }
}
