//! End-to-end tests on tiny-sd: the real pipeline code, tiny weights, the CPU.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::*;

/// One tiny-sd for the whole test binary: creating and loading it is the slow part.
fn shared() -> &'static (tempfile::TempDir, ModelFiles, Pipeline) {
    static SHARED: OnceLock<(tempfile::TempDir, ModelFiles, Pipeline)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let files: ModelFiles = create_tiny(dir.path()).unwrap().into_iter().collect();
        let pipeline = Pipeline::load(Family::Tiny, &files, &Device::Cpu).unwrap();
        (dir, files, pipeline)
    })
}

fn pipeline() -> &'static Pipeline {
    &shared().2
}

fn params(seed: u64) -> GenerateParams {
    GenerateParams {
        steps: 2,
        seed,
        ..default_params(Family::Tiny, "a yellow duck on a pond")
    }
}

fn generate(pipeline: &Pipeline, params: &GenerateParams) -> Vec<RgbImage> {
    pipeline.generate(params, &mut |_, _| {}).unwrap()
}

#[test]
fn generates_an_image_of_the_requested_size() {
    let mut steps = Vec::new();
    let images = pipeline()
        .generate(&params(1), &mut |done, total| steps.push((done, total)))
        .unwrap();
    assert_eq!(images.len(), 1);
    let image = &images[0];
    assert_eq!((image.width, image.height), (64, 64));
    assert_eq!(image.pixels.len(), 64 * 64 * 3);
    assert_eq!(steps, [(1, 2), (2, 2)]);
    // Random weights still give an image, not a flat fill.
    let distinct: std::collections::BTreeSet<u8> = image.pixels.iter().copied().collect();
    assert!(
        distinct.len() > 16,
        "only {} distinct values",
        distinct.len()
    );
}

#[test]
fn non_square_sizes_follow_the_request() {
    let p = GenerateParams {
        width: 128,
        height: 72,
        ..params(1)
    };
    let image = &generate(pipeline(), &p)[0];
    assert_eq!((image.width, image.height), (128, 72));
    assert_eq!(image.pixels.len(), 128 * 72 * 3);
}

#[test]
fn the_same_seed_gives_the_same_pixels() {
    let a = generate(pipeline(), &params(42));
    let b = generate(pipeline(), &params(42));
    assert_eq!(a, b);
}

#[test]
fn another_seed_gives_other_pixels() {
    let a = generate(pipeline(), &params(42));
    let b = generate(pipeline(), &params(43));
    assert_ne!(a[0].pixels, b[0].pixels);
}

#[test]
fn the_prompt_and_negative_prompt_matter() {
    let a = generate(pipeline(), &params(5));
    let b = generate(
        pipeline(),
        &GenerateParams {
            prompt: "a red fox in the snow".into(),
            ..params(5)
        },
    );
    let c = generate(
        pipeline(),
        &GenerateParams {
            negative_prompt: "blurry".into(),
            ..params(5)
        },
    );
    assert_ne!(a[0].pixels, b[0].pixels);
    assert_ne!(a[0].pixels, c[0].pixels);
}

#[test]
fn a_batch_of_two_gives_two_different_images() {
    let p = GenerateParams {
        count: 2,
        ..params(9)
    };
    let images = generate(pipeline(), &p);
    assert_eq!(images.len(), 2);
    assert!(images.iter().all(|i| i.pixels.len() == 64 * 64 * 3));
    assert_ne!(images[0].pixels, images[1].pixels);
    assert_eq!(
        images,
        generate(pipeline(), &p),
        "batches are reproducible too"
    );
}

#[test]
fn guidance_off_runs_the_unguided_path() {
    let p = GenerateParams {
        guidance: 0.0,
        ..params(3)
    };
    let a = generate(pipeline(), &p);
    assert_eq!(a, generate(pipeline(), &p));
    assert_ne!(a[0].pixels, generate(pipeline(), &params(3))[0].pixels);
}

#[test]
fn long_prompts_are_truncated_not_refused() {
    let p = GenerateParams {
        prompt: "duck ".repeat(200),
        ..params(1)
    };
    assert_eq!(generate(pipeline(), &p).len(), 1);
}

#[test]
fn bad_parameters_are_reported_as_such() {
    let cases = [
        GenerateParams {
            width: 60,
            ..params(1)
        },
        GenerateParams {
            height: 4096,
            ..params(1)
        },
        GenerateParams {
            width: 32,
            ..params(1)
        },
        GenerateParams {
            steps: 0,
            ..params(1)
        },
        GenerateParams {
            steps: MAX_STEPS + 1,
            ..params(1)
        },
        GenerateParams {
            count: 0,
            ..params(1)
        },
        GenerateParams {
            count: MAX_COUNT + 1,
            ..params(1)
        },
        GenerateParams {
            guidance: f32::NAN,
            ..params(1)
        },
        GenerateParams {
            guidance: -1.0,
            ..params(1)
        },
    ];
    for p in cases {
        match pipeline().generate(&p, &mut |_, _| {}) {
            Err(DiffusionError::BadParams(_)) => {}
            other => panic!("{p:?}: expected BadParams, got {other:?}"),
        }
    }
}

fn file_bytes(files: &[(FileRole, PathBuf)]) -> Vec<(FileRole, Vec<u8>)> {
    files
        .iter()
        .map(|(role, path)| (*role, std::fs::read(path).unwrap()))
        .collect()
}

#[test]
fn creating_tiny_twice_gives_identical_files() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = create_tiny(a.path()).unwrap();
    let second = create_tiny(b.path()).unwrap();
    let roles: Vec<FileRole> = first.iter().map(|(role, _)| *role).collect();
    assert_eq!(
        roles,
        [
            FileRole::Unet,
            FileRole::Vae,
            FileRole::TextEncoder,
            FileRole::Tokenizer,
            FileRole::Config
        ]
    );
    assert_eq!(file_bytes(&first), file_bytes(&second));
    let total: usize = file_bytes(&first).iter().map(|(_, b)| b.len()).sum();
    assert!(total < 3 << 20, "tiny-sd is {total} bytes");
}

/// Loads tiny-sd from a copy of the shared files with `change` applied to the copy.
fn load_changed(change: impl FnOnce(&Path, &mut ModelFiles)) -> Result<Pipeline, DiffusionError> {
    let dir = tempfile::tempdir().unwrap();
    let mut files = ModelFiles::default();
    for (role, path) in &shared().1.paths {
        let copy = dir.path().join(path.file_name().unwrap());
        std::fs::copy(path, &copy).unwrap();
        files.insert(*role, copy);
    }
    change(dir.path(), &mut files);
    Pipeline::load(Family::Tiny, &files, &Device::Cpu)
}

#[test]
fn a_missing_file_is_reported_by_role_and_path() {
    let error = load_changed(|_, files| {
        std::fs::remove_file(files.get(FileRole::Vae).unwrap()).unwrap();
    })
    .unwrap_err();
    match &error {
        DiffusionError::MissingWeights {
            role: FileRole::Vae,
            path: Some(path),
        } => assert!(path.ends_with("vae.safetensors")),
        other => panic!("expected missing vae, got {other:?}"),
    }
    assert!(error.to_string().contains("vae.safetensors"), "{error}");

    let error = load_changed(|_, files| {
        files.paths.remove(&FileRole::Tokenizer);
    })
    .unwrap_err();
    assert!(
        matches!(
            error,
            DiffusionError::MissingWeights {
                role: FileRole::Tokenizer,
                path: None
            }
        ),
        "{error:?}"
    );
}

#[test]
fn a_damaged_file_is_reported_as_corrupt() {
    for role in [
        FileRole::Unet,
        FileRole::TextEncoder,
        FileRole::Tokenizer,
        FileRole::Config,
    ] {
        let error = load_changed(|_, files| {
            let path = files.get(role).unwrap();
            let bytes = std::fs::read(path).unwrap();
            std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
        })
        .unwrap_err();
        match error {
            DiffusionError::CorruptWeights { role: r, .. } if r == role => {}
            other => panic!("{role}: expected corrupt, got {other:?}"),
        }
    }
    // Well-formed weights of the wrong model: the VAE's file where the UNet's belongs.
    let error = load_changed(|_, files| {
        let vae = files.get(FileRole::Vae).unwrap().to_owned();
        files.insert(FileRole::Unet, vae);
    })
    .unwrap_err();
    assert!(
        matches!(
            error,
            DiffusionError::CorruptWeights {
                role: FileRole::Unet,
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn a_config_that_would_crash_candle_is_refused() {
    let error = load_changed(|_, files| {
        let mut config = tiny_config();
        config.unet.blocks.clear();
        let path = files.get(FileRole::Config).unwrap();
        std::fs::write(path, serde_json::to_string(&config).unwrap()).unwrap();
    })
    .unwrap_err();
    assert!(
        matches!(
            error,
            DiffusionError::CorruptWeights {
                role: FileRole::Config,
                ..
            }
        ),
        "{error:?}"
    );
}

/// The turbo families' sampler, through tiny-sd with its config switched to it: ancestral noise
/// is drawn at every step but the last, and must come from the seed.
#[test]
fn euler_ancestral_is_deterministic_too() {
    let pipeline = load_changed(|_, files| {
        let mut config = tiny_config();
        config.scheduler = SchedulerSpec::EulerAncestral {
            prediction: Prediction::Epsilon,
        };
        let path = files.get(FileRole::Config).unwrap();
        std::fs::write(path, serde_json::to_string(&config).unwrap()).unwrap();
    })
    .unwrap();
    assert_eq!(pipeline.scheduler_name(), "euler_ancestral");
    let p = GenerateParams {
        steps: 3,
        guidance: 0.0,
        ..params(11)
    };
    let a = generate(&pipeline, &p);
    assert_eq!(a, generate(&pipeline, &p));
    assert_ne!(a, generate(&pipeline, &GenerateParams { seed: 12, ..p }));
}

#[test]
fn the_tiny_tokenizer_behaves_like_clip() {
    let tokenizer =
        tokenizers::Tokenizer::from_file(shared().1.get(FileRole::Tokenizer).unwrap()).unwrap();
    let encoding = tokenizer.encode("A  Duck!", true).unwrap();
    assert_eq!(
        encoding.get_tokens(),
        [
            "<|startoftext|>",
            "a</w>",
            "d",
            "u",
            "c",
            "k</w>",
            "!</w>",
            "<|endoftext|>"
        ]
    );
    assert_eq!(
        tokenizer.get_vocab_size(true),
        tiny_config().text_encoder.vocab_size
    );
}

#[test]
fn the_pipeline_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Pipeline>();
}

/// The real families' code paths with their real shapes: random weights in the shapes of each
/// candle preset ([`create_real_shapes`]: UNet, VAE, text encoders, in f16 like the fp16
/// downloads) go through
/// `Pipeline::load` and one 64x64 step. This checks that presets, weight names, the CLIP port,
/// XL's two encoders and the samplers fit together; it cannot say anything about image quality.
/// Each family writes 1.5 to 5 GB of weights and needs up to 16 GB of memory:
/// `cargo test --release -p ducks-runner -- --ignored --test-threads 1 real_shapes`.
mod real_shapes {
    use super::*;

    fn smoke(family: Family) {
        let dir = tempfile::tempdir().unwrap();
        let files: ModelFiles = create_real_shapes(family, dir.path())
            .unwrap()
            .into_iter()
            .collect();
        let started = std::time::Instant::now();
        let pipeline = Pipeline::load(family, &files, &Device::Cpu).unwrap();
        let loaded = started.elapsed();
        let p = GenerateParams {
            width: 64,
            height: 64,
            steps: 1,
            ..default_params(family, "a duck")
        };
        let images = generate(&pipeline, &p);
        assert_eq!(images[0].pixels.len(), 64 * 64 * 3);
        assert_eq!(images, generate(&pipeline, &p));
        println!(
            "{family}: loaded in {loaded:.1?}, one 64x64 step (guidance {}) in {:.1?}",
            p.guidance,
            started.elapsed() - loaded
        );
    }

    #[test]
    #[ignore]
    fn real_shapes_sd15() {
        smoke(Family::Sd15);
    }

    #[test]
    #[ignore]
    fn real_shapes_sd21() {
        smoke(Family::Sd21);
    }

    #[test]
    #[ignore]
    fn real_shapes_sd_turbo() {
        smoke(Family::SdTurbo);
    }

    #[test]
    #[ignore]
    fn real_shapes_sdxl() {
        smoke(Family::Sdxl);
    }

    #[test]
    #[ignore]
    fn real_shapes_sdxl_turbo() {
        smoke(Family::SdxlTurbo);
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn without_the_cuda_feature_the_device_is_the_cpu() {
    assert!(device().is_cpu());
}

/// The real families run the same loader: handed tiny-sd's files, they find every role they
/// need and then report the text encoder (the first file read) as not fitting.
#[test]
fn real_families_report_wrong_weights_as_corrupt() {
    let tiny = &shared().1;
    for family in Family::ALL.into_iter().filter(|f| *f != Family::Tiny) {
        let mut files = tiny.clone();
        let error = Pipeline::load(family, &files, &Device::Cpu).unwrap_err();
        if family.is_xl() {
            assert!(
                matches!(
                    error,
                    DiffusionError::MissingWeights {
                        role: FileRole::TextEncoder2 | FileRole::Tokenizer2,
                        path: None
                    }
                ),
                "{family}: {error:?}"
            );
            files.insert(
                FileRole::TextEncoder2,
                tiny.get(FileRole::TextEncoder).unwrap(),
            );
            files.insert(FileRole::Tokenizer2, tiny.get(FileRole::Tokenizer).unwrap());
        }
        match Pipeline::load(family, &files, &Device::Cpu).unwrap_err() {
            DiffusionError::CorruptWeights {
                role: FileRole::TextEncoder,
                ..
            } => {}
            other => panic!("{family}: expected a corrupt text encoder, got {other:?}"),
        }
    }
}
