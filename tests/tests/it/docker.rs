//! The container images' build contexts, checked without a Docker engine.
//!
//! For each Dockerfile, the files its `COPY` instructions take from the build context (what
//! `.dockerignore` leaves) are laid out in a temporary folder as the build stage sees them, and
//! `cargo metadata --locked --offline` must load the same workspace there as here: every member,
//! every target with its file, and the package, binary and features the image's `cargo build`
//! asks for.
//!
//! What this proves: cargo can load the workspace and Cargo.lock from the image's context. What
//! it cannot: no image is built here, so a missing system package, a failing `RUN`, or a file that
//! only the compiler reads (a module, an `include_str!`) shows only in a real `docker build`.
//!
//! The Dockerfile subset read: `FROM`, `WORKDIR`, `COPY` in shell or JSON form (`--chown`,
//! `--chmod` and `--link` accepted, copies `--from` another stage or image skipped), and the last
//! `RUN … cargo build …`. Files made by `RUN` are not seen, so a context completed by stub files
//! fails. Anything else that would change what is copied (`ADD`, heredocs, variables or
//! wildcards in paths, other `COPY` flags, the `escape` directive, a build stage that starts from
//! another stage) is reported as not modelled rather than guessed at.
//!
//! The `.dockerignore` subset read, with Docker's meaning: a line starting with `#` is a comment;
//! surrounding space is trimmed; patterns are relative to the context root whether or not they
//! start with `/`; a trailing `/` is dropped, so `target/` also matches a file named `target`,
//! and only at the root; `*` and `?` match within one path segment; a `**` segment matches any
//! number of segments, none included; a pattern that matches a folder leaves out everything in
//! it. `!` exceptions, `[…]` classes and `\` escapes are reported as not modelled. BuildKit's
//! `<Dockerfile>.dockerignore` beside a Dockerfile takes precedence over the root file, as there.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

use crate::support::host_triple;

/// What an image is built for: the `-p` package of its `cargo build`, the binary it ships and
/// exactly the features it enables.
struct Image {
    /// Relative to the workspace root, which is also the build context.
    dockerfile: &'static str,
    package: &'static str,
    bin: &'static str,
    features: &'static [&'static str],
}

const DUCKS_IMAGE: Image = Image {
    dockerfile: "docker/ducks.Dockerfile",
    package: "ducks",
    bin: "ducks",
    features: &[],
};

const RUNNER_IMAGE: Image = Image {
    dockerfile: "docker/runner.Dockerfile",
    package: "ducks",
    bin: "ducks",
    features: &["cuda"],
};

#[test]
fn ducks_image_context_holds_the_whole_workspace() {
    assert_context_loads(&DUCKS_IMAGE);
}

#[test]
fn runner_image_context_holds_the_whole_workspace_and_cuda() {
    assert_context_loads(&RUNNER_IMAGE);
}

/// The check fails, naming what is missing, for the mistakes it exists to catch.
#[test]
fn contexts_missing_a_member_or_a_target_fail_the_check() {
    let root = &real_workspace().root;
    let ducks_dockerfile = read(&root.join(DUCKS_IMAGE.dockerfile));
    let ignore = read(&root.join(".dockerignore"));

    let without_models = format!("{ignore}\nmodels/\n");
    let problems = check(&DUCKS_IMAGE, &ducks_dockerfile, &without_models);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("ducks-models") || p.contains("/models")),
        "{problems:#?}"
    );

    let without_a_bench = format!("{ignore}\ntests/benches/kube.rs\n");
    let problems = check(&DUCKS_IMAGE, &ducks_dockerfile, &without_a_bench);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("bench target `kube` of `ducks-tests`")),
        "{problems:#?}"
    );

    // The layout these files had before contract/ and models/: some folders copied by name.
    let some_folders = "FROM rust:1.95.0-slim-bookworm AS build\n\
                        WORKDIR /src\n\
                        COPY Cargo.toml Cargo.lock ./\n\
                        COPY queue queue\n\
                        COPY runner runner\n\
                        COPY cli cli\n\
                        RUN cargo build --release --locked -p ducks\n";
    let problems = check(&DUCKS_IMAGE, some_folders, &ignore);
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with(DUCKS_IMAGE.dockerfile) && p.contains("cargo metadata")),
        "{problems:#?}"
    );

    let runner_dockerfile = read(&root.join(RUNNER_IMAGE.dockerfile));
    let without_cuda = runner_dockerfile.replace(" --features cuda", "");
    let problems = check(&RUNNER_IMAGE, &without_cuda, &ignore);
    assert!(
        problems.iter().any(|p| p.contains("features")),
        "{problems:#?}"
    );
}

#[test]
fn dockerignore_patterns_match_as_docker_does() {
    let cases: &[(&str, &str, bool)] = &[
        ("target/", "target", true),
        ("target/", "target/release/ducks", true),
        ("target/", "tests/target", false),
        ("target/", "targets", false),
        ("/Makefile", "Makefile", true),
        ("**/node_modules/", "node_modules/x.js", true),
        ("**/node_modules/", "bench/bullmq/node_modules/x.js", true),
        ("**/node_modules/", "bench/node_modules_old", false),
        ("*.md", "README.md", true),
        ("*.md", "cli/README.md", false),
        ("docs", "docs/job-contract.md", true),
        ("docs", "cli/docs", false),
        ("tests/benches/kube.rs", "tests/benches/kube.rs", true),
        ("tests/*/k?be.rs", "tests/benches/kube.rs", true),
        ("tests/*/k?be.rs", "tests/benches/kuube.rs", false),
        ("tests/**/main.rs", "tests/main.rs", true),
        ("tests/**/main.rs", "tests/tests/it/main.rs", true),
    ];
    for &(pattern, path, excluded) in cases {
        let ignore = Ignore::parse(pattern).expect(pattern);
        assert_eq!(
            ignore.excludes(path),
            excluded,
            "{pattern:?} against {path:?}"
        );
    }
    let comments = Ignore::parse("# target/\n\n   \n").expect("comments only");
    assert!(!comments.excludes("target"));
    for refused in ["!README.md", "[ab].rs", "a\\*b", "x**", "../x"] {
        assert!(
            Ignore::parse(refused).is_err(),
            "{refused:?} should be refused"
        );
    }
}

#[test]
fn copy_instructions_are_read_from_the_build_context_only() {
    let dockerfile = "# syntax=docker/dockerfile:1.7\n\
                      ARG BASE=rust\n\
                      FROM ${BASE} AS build\n\
                      WORKDIR /src\n\
                      WORKDIR app\n\
                      COPY --chown=1:1 Cargo.toml \\\n\
                      # a comment inside a continued line\n\
                      \x20   Cargo.lock ./\n\
                      COPY [\"cli\", \"cli\"]\n\
                      COPY --from=tools /bin/tool /bin/\n\
                      RUN --mount=type=cache,target=/x cargo build --release --locked \\\n\
                      \x20   -p ducks --features=cuda,extra && cp target/release/ducks /\n\
                      FROM debian\n\
                      COPY --from=build /ducks /ducks\n";
    let stage = BuildStage::parse(dockerfile).expect("parses");
    assert_eq!(
        stage,
        BuildStage {
            copies: vec![
                ContextCopy {
                    sources: vec!["Cargo.toml".into(), "Cargo.lock".into()],
                    dest: "/src/app/".into(),
                },
                ContextCopy {
                    sources: vec!["cli".into()],
                    dest: "/src/app/cli".into(),
                },
            ],
            workdir: "/src/app".into(),
            cargo: CargoBuild {
                packages: ["ducks".to_owned()].into(),
                features: ["cuda".to_owned(), "extra".to_owned()].into(),
                locked: true,
            },
        }
    );
    for refused in [
        "FROM a\nADD x /x\nRUN cargo build\n",
        "FROM a\nCOPY --parents x /x\nRUN cargo build\n",
        "FROM a\nCOPY */Cargo.toml /x/\nRUN cargo build\n",
        "FROM a\nCOPY $DIR /x\nRUN cargo build\n",
        "FROM a\nCOPY <<EOF /x\nhello\nEOF\nRUN cargo build\n",
        "FROM a AS base\nFROM base\nRUN cargo build\n",
        "FROM a\nCOPY . .\n",
    ] {
        assert!(
            BuildStage::parse(refused).is_err(),
            "{refused:?} should be refused"
        );
    }
}

/// Panics with every problem found, each naming the Dockerfile.
fn assert_context_loads(image: &Image) {
    let root = &real_workspace().root;
    let dockerfile = read(&root.join(image.dockerfile));
    // BuildKit prefers `<Dockerfile>.dockerignore` beside the Dockerfile to the root's file.
    let own_ignore = root.join(format!("{}.dockerignore", image.dockerfile));
    let ignore = if own_ignore.exists() {
        read(&own_ignore)
    } else {
        read(&root.join(".dockerignore"))
    };
    let problems = check(image, &dockerfile, &ignore);
    assert!(
        problems.is_empty(),
        "the build context of {} would not build:\n{}",
        image.dockerfile,
        problems.join("\n")
    );
}

/// Everything wrong with building `image` from the real workspace as this Dockerfile and
/// `.dockerignore` describe its context; each problem starts with the Dockerfile's name.
fn check(image: &Image, dockerfile: &str, dockerignore: &str) -> Vec<String> {
    check_context(image, dockerfile, dockerignore)
        .into_iter()
        .map(|problem| format!("{}: {problem}", image.dockerfile))
        .collect()
}

fn check_context(image: &Image, dockerfile: &str, dockerignore: &str) -> Vec<String> {
    let real = real_workspace();
    let ignore = match Ignore::parse(dockerignore) {
        Ok(ignore) => ignore,
        Err(problem) => return vec![format!(".dockerignore: {problem}")],
    };
    let stage = match BuildStage::parse(dockerfile) {
        Ok(stage) => stage,
        Err(problem) => return vec![problem],
    };
    let mut problems = stage.cargo.problems(image);

    let scratch = tempfile::tempdir().expect("a temporary folder");
    // Canonical, so that the paths cargo reports start with it.
    let rootfs = scratch
        .path()
        .canonicalize()
        .expect("the temporary folder exists")
        .join("rootfs");
    for copy in &stage.copies {
        problems.extend(copy.apply(&real.root, &ignore, &rootfs));
    }
    let workdir = rootfs.join(stage.workdir.trim_start_matches('/'));
    let manifest = workdir.join("Cargo.toml");
    if !manifest.is_file() {
        problems.push(format!(
            "the context puts no Cargo.toml in {}, where `cargo build` runs",
            stage.workdir
        ));
        return problems;
    }
    let copied =
        match cargo_metadata(&manifest, &workdir).and_then(|m| Workspace::from_metadata(&m)) {
            Ok(copied) => copied,
            Err(error) => {
                problems.push(format!(
                    "cargo metadata --locked fails in the build context (a workspace member, \
                 Cargo.lock or a path dependency left out?):\n{error}"
                ));
                return problems;
            }
        };
    problems.extend(copied.problems_against(real));
    problems.extend(copied.problems_for(image));
    problems
}

/// One `COPY` from the build context, as the build stage runs it.
#[derive(Debug, PartialEq)]
struct ContextCopy {
    /// As written: relative to the context root, whether or not they start with `/`.
    sources: Vec<String>,
    /// Absolute in the image: the destination resolved against the `WORKDIR` of its time,
    /// keeping a trailing `/`, which makes it a folder.
    dest: String,
}

impl ContextCopy {
    /// Copies the sources into `rootfs` as Docker would; what cannot be copied is a problem.
    fn apply(&self, context: &Path, ignore: &Ignore, rootfs: &Path) -> Vec<String> {
        let mut problems = Vec::new();
        let dest = rootfs.join(self.dest.trim_start_matches('/'));
        let into_folder = self.dest.ends_with('/') || dest.is_dir();
        if self.sources.len() > 1 && !into_folder {
            return vec![format!(
                "COPY {} {}: with several sources the destination must end with /",
                self.sources.join(" "),
                self.dest
            )];
        }
        for source in &self.sources {
            let rel = match context_path(source) {
                Ok(rel) => rel,
                Err(problem) => {
                    problems.push(problem);
                    continue;
                }
            };
            let from = context.join(&rel);
            if (!rel.is_empty() && ignore.excludes(&rel)) || fs::symlink_metadata(&from).is_err() {
                problems.push(format!(
                    "COPY {source}: not in the build context (absent, or left out by .dockerignore)"
                ));
                continue;
            }
            // A folder's contents go into the destination; a file goes into it if it is a folder.
            let to = match from.file_name() {
                Some(name) if !from.is_dir() && into_folder => dest.join(name),
                _ => dest.clone(),
            };
            if let Err(error) = copy_from_context(context, &rel, &to, ignore) {
                problems.push(format!("COPY {source}: copying it failed: {error}"));
            }
        }
        problems
    }
}

/// A `COPY` source as a path inside the context: slash-separated, "" for the root.
fn context_path(source: &str) -> Result<String, String> {
    let mut segments = Vec::new();
    for segment in source.split('/') {
        match segment {
            "" | "." => {}
            ".." => return Err(format!("COPY {source}: outside the build context")),
            segment => segments.push(segment),
        }
    }
    Ok(segments.join("/"))
}

/// Copies `rel` (a path in `context`) to `to`, leaving out what `ignore` excludes. Symbolic
/// links stay links, as in a build context; entries that vanish meanwhile are skipped.
fn copy_from_context(context: &Path, rel: &str, to: &Path, ignore: &Ignore) -> io::Result<()> {
    let from = context.join(rel);
    let kind = fs::symlink_metadata(&from)?.file_type();
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    if kind.is_dir() {
        fs::create_dir_all(to)?;
        for entry in fs::read_dir(&from)? {
            let name = entry?.file_name();
            let child = match rel {
                "" => name.to_string_lossy().into_owned(),
                rel => format!("{rel}/{}", name.to_string_lossy()),
            };
            if ignore.excludes(&child) {
                continue;
            }
            match copy_from_context(context, &child, &to.join(&name), ignore) {
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
    } else if kind.is_symlink() {
        if fs::symlink_metadata(to).is_ok() {
            fs::remove_file(to)?;
        }
        std::os::unix::fs::symlink(fs::read_link(&from)?, to)?;
    } else {
        fs::copy(&from, to)?;
    }
    Ok(())
}

/// The stage that runs the Dockerfile's last `cargo build`, as far as the context matters.
#[derive(Debug, PartialEq)]
struct BuildStage {
    /// Its copies from the context before that `cargo build`, in order.
    copies: Vec<ContextCopy>,
    /// Where `cargo build` runs.
    workdir: String,
    cargo: CargoBuild,
}

/// A stage while the Dockerfile is read.
struct Stage {
    name: Option<String>,
    /// The earlier stage it starts from, if any: its files are not modelled.
    base_stage: Option<String>,
    workdir: String,
    copies: Vec<ContextCopy>,
}

impl BuildStage {
    fn parse(dockerfile: &str) -> Result<Self, String> {
        let mut stages: Vec<Stage> = Vec::new();
        let mut build: Option<(usize, usize, String, CargoBuild)> = None;
        for (keyword, args) in instructions(dockerfile)? {
            if keyword == "FROM" {
                let words: Vec<&str> = args
                    .split_whitespace()
                    .filter(|word| !word.starts_with("--"))
                    .collect();
                let base = words.first().map(|base| base.to_ascii_lowercase());
                let name = match words.as_slice() {
                    [_, as_, name] if as_.eq_ignore_ascii_case("as") => {
                        Some(name.to_ascii_lowercase())
                    }
                    _ => None,
                };
                let base_stage = base.filter(|base| {
                    stages
                        .iter()
                        .any(|stage| stage.name.as_deref() == Some(base.as_str()))
                });
                stages.push(Stage {
                    name,
                    base_stage,
                    workdir: "/".into(),
                    copies: Vec::new(),
                });
                continue;
            }
            // Before the first FROM only ARG may come, and it copies nothing.
            let Some(index) = stages.len().checked_sub(1) else {
                continue;
            };
            let stage = &mut stages[index];
            match keyword.as_str() {
                "WORKDIR" => {
                    if args.contains('$') {
                        return Err(format!("WORKDIR {args}: variables are not modelled"));
                    }
                    stage.workdir = resolve(&stage.workdir, args.trim());
                }
                "COPY" => {
                    if let Some((sources, dest)) = parse_copy(&args)? {
                        let folder = dest.ends_with('/') || dest == "." || dest.ends_with("/.");
                        let mut dest = resolve(&stage.workdir, &dest);
                        if folder && !dest.ends_with('/') {
                            dest.push('/');
                        }
                        stage.copies.push(ContextCopy { sources, dest });
                    }
                }
                "ADD" => {
                    return Err(format!(
                        "ADD {args}: not modelled (URLs, archives); copy from the context with COPY"
                    ));
                }
                "RUN" => {
                    if let Some(cargo) = CargoBuild::parse(&args) {
                        build = Some((index, stage.copies.len(), stage.workdir.clone(), cargo));
                    }
                }
                _ => {}
            }
        }
        let Some((stage_index, copies_before, workdir, cargo)) = build else {
            return Err("no `RUN … cargo build …`".into());
        };
        let mut stage = stages.swap_remove(stage_index);
        if let Some(base) = stage.base_stage {
            return Err(format!(
                "`cargo build` runs in a stage built on stage `{base}`, whose files are not modelled"
            ));
        }
        stage.copies.truncate(copies_before);
        Ok(Self {
            copies: stage.copies,
            workdir,
            cargo,
        })
    }
}

/// The instructions of a Dockerfile, keyword upper-cased: continued lines joined, comments
/// (also those inside continued lines) and blank lines dropped.
fn instructions(dockerfile: &str) -> Result<Vec<(String, String)>, String> {
    let directives = dockerfile
        .lines()
        .take_while(|line| line.trim_start().starts_with('#'));
    for directive in directives {
        let directive: String = directive.chars().filter(|c| !c.is_whitespace()).collect();
        if directive.to_ascii_lowercase().starts_with("#escape=") {
            return Err("the `escape` parser directive is not modelled".into());
        }
    }
    let mut instructions = Vec::new();
    let mut pending = String::new();
    for line in dockerfile.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
            }
            None => {
                pending.push_str(line);
                instructions.push(split_instruction(&pending)?);
                pending.clear();
            }
        }
    }
    if !pending.trim().is_empty() {
        instructions.push(split_instruction(&pending)?);
    }
    Ok(instructions)
}

fn split_instruction(line: &str) -> Result<(String, String), String> {
    if line.contains("<<") {
        return Err(format!("{line}: heredocs are not modelled"));
    }
    let line = line.trim();
    let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    Ok((keyword.to_ascii_uppercase(), args.trim().to_owned()))
}

/// `COPY`'s sources and destination, or `None` for a copy from another stage or image.
fn parse_copy(args: &str) -> Result<Option<(Vec<String>, String)>, String> {
    let mut rest = args.trim_start();
    let mut from_elsewhere = false;
    while let Some(flag_onwards) = rest.strip_prefix("--") {
        let end = flag_onwards
            .find(char::is_whitespace)
            .unwrap_or(flag_onwards.len());
        let flag = &flag_onwards[..end];
        match flag.split('=').next().unwrap_or(flag) {
            "from" => from_elsewhere = true,
            "chown" | "chmod" | "link" => {}
            other => return Err(format!("COPY --{other}: not modelled")),
        }
        rest = flag_onwards[end..].trim_start();
    }
    if from_elsewhere {
        return Ok(None);
    }
    let mut paths: Vec<String> = if rest.starts_with('[') {
        serde_json::from_str(rest).map_err(|error| format!("COPY {rest}: {error}"))?
    } else {
        rest.split_whitespace().map(str::to_owned).collect()
    };
    let dest = paths
        .pop()
        .filter(|_| !paths.is_empty())
        .ok_or_else(|| format!("COPY {args}: needs a source and a destination"))?;
    if paths.iter().chain([&dest]).any(|path| path.contains('$')) {
        return Err(format!("COPY {args}: variables are not modelled"));
    }
    if paths.iter().any(|path| path.contains(['*', '?', '['])) {
        return Err(format!("COPY {args}: wildcards are not modelled"));
    }
    Ok(Some((paths, dest)))
}

/// `path` in the image, resolved against the absolute `base`, with `.` and `..` folded.
fn resolve(base: &str, path: &str) -> String {
    let mut segments: Vec<&str> = if path.starts_with('/') {
        Vec::new()
    } else {
        base.split('/').filter(|s| !s.is_empty()).collect()
    };
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            segment => segments.push(segment),
        }
    }
    format!("/{}", segments.join("/"))
}

/// What a `cargo build` command line asks for.
#[derive(Debug, PartialEq)]
struct CargoBuild {
    packages: BTreeSet<String>,
    features: BTreeSet<String>,
    /// `--locked` or `--frozen`: the build uses Cargo.lock as it is, as this check does.
    locked: bool,
}

impl CargoBuild {
    /// The `cargo build` in a `RUN` line, up to the end of its shell command.
    fn parse(run: &str) -> Option<Self> {
        let words: Vec<&str> = run.split_whitespace().collect();
        let at = words.windows(2).position(|pair| {
            (pair[0] == "cargo" || pair[0].ends_with("/cargo")) && pair[1] == "build"
        })?;
        let mut build = Self {
            packages: BTreeSet::new(),
            features: BTreeSet::new(),
            locked: false,
        };
        let mut args = words[at + 2..]
            .iter()
            .take_while(|word| !matches!(**word, "&&" | "||" | ";" | "|"))
            .map(|word| word.trim_end_matches(';'));
        while let Some(arg) = args.next() {
            let (flag, value) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => (flag, Some(value)),
                _ => (arg, None),
            };
            match flag {
                "-p" | "--package" => build
                    .packages
                    .extend(value.or_else(|| args.next()).map(str::to_owned)),
                "-F" | "--features" => build.features.extend(
                    value
                        .or_else(|| args.next())
                        .into_iter()
                        .flat_map(|list| list.split(','))
                        .map(|feature| feature.trim_matches(['"', '\'']))
                        .filter(|feature| !feature.is_empty())
                        .map(str::to_owned),
                ),
                "--locked" | "--frozen" => build.locked = true,
                _ => {}
            }
        }
        Some(build)
    }

    fn problems(&self, image: &Image) -> Vec<String> {
        let mut problems = Vec::new();
        let package: BTreeSet<String> = [image.package.to_owned()].into();
        if self.packages != package {
            problems.push(format!(
                "`cargo build` builds packages {:?}, not exactly `{}`",
                self.packages, image.package
            ));
        }
        let features: BTreeSet<String> = image.features.iter().map(|f| (*f).to_owned()).collect();
        if self.features != features {
            problems.push(format!(
                "`cargo build` enables features {:?}, not exactly {features:?}",
                self.features
            ));
        }
        if !self.locked {
            problems.push("`cargo build` runs without --locked".into());
        }
        problems
    }
}

/// `.dockerignore` as patterns of path segments (see the module's doc for the subset).
struct Ignore {
    patterns: Vec<Vec<String>>,
}

impl Ignore {
    fn parse(text: &str) -> Result<Self, String> {
        let mut patterns = Vec::new();
        for line in text.lines() {
            // Docker reads `#` as a comment only in the first column.
            if line.starts_with('#') {
                continue;
            }
            let pattern = line.trim();
            if pattern.is_empty() {
                continue;
            }
            if pattern.starts_with('!') || pattern.contains(['[', '\\']) {
                return Err(format!("`{pattern}`: `!`, `[…]` and `\\` are not modelled"));
            }
            let mut segments = Vec::new();
            for segment in pattern.split('/') {
                match segment {
                    "" | "." => {}
                    ".." => return Err(format!("`{pattern}`: `..` is not modelled")),
                    "**" => segments.push(segment.to_owned()),
                    segment if segment.contains("**") => {
                        return Err(format!("`{pattern}`: `**` inside a name is not modelled"));
                    }
                    segment => segments.push(segment.to_owned()),
                }
            }
            if segments.is_empty() {
                return Err(format!("`{pattern}` would leave out the whole context"));
            }
            patterns.push(segments);
        }
        Ok(Self { patterns })
    }

    /// Whether `path` (slash-separated, relative to the context root) is left out: a pattern
    /// matches it or one of the folders above it.
    fn excludes(&self, path: &str) -> bool {
        let segments: Vec<&str> = path.split('/').collect();
        self.patterns.iter().any(|pattern| {
            (1..=segments.len()).any(|depth| segments_match(pattern, &segments[..depth]))
        })
    }
}

fn segments_match(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => {
            (0..=path.len()).any(|skipped| segments_match(rest, &path[skipped..]))
        }
        Some((first, rest)) => path.split_first().is_some_and(|(segment, path_rest)| {
            let pattern: Vec<char> = first.chars().collect();
            let name: Vec<char> = segment.chars().collect();
            name_matches(&pattern, &name) && segments_match(rest, path_rest)
        }),
    }
}

/// `*` and `?` within one segment, as Go's `filepath.Match`.
fn name_matches(pattern: &[char], name: &[char]) -> bool {
    match (pattern.split_first(), name.split_first()) {
        (Some(('*', rest)), _) => {
            name_matches(rest, name)
                || name
                    .split_first()
                    .is_some_and(|(_, name_rest)| name_matches(pattern, name_rest))
        }
        (Some(('?', rest)), Some((_, name_rest))) => name_matches(rest, name_rest),
        (Some((p, rest)), Some((c, name_rest))) => p == c && name_matches(rest, name_rest),
        (None, None) => true,
        _ => false,
    }
}

/// A workspace as `cargo metadata` reports it, paths relative to its root.
struct Workspace {
    root: PathBuf,
    members: Vec<Member>,
}

struct Member {
    name: String,
    /// The folder of its Cargo.toml.
    dir: PathBuf,
    features: BTreeSet<String>,
    targets: Vec<Target>,
}

struct Target {
    /// `bin`, `lib`, `test`, `bench`, `example`, `custom-build`… (joined if several).
    kind: String,
    name: String,
    src: PathBuf,
}

impl Workspace {
    fn from_metadata(metadata: &Value) -> Result<Self, String> {
        let root = PathBuf::from(
            metadata["workspace_root"]
                .as_str()
                .ok_or("cargo metadata: no workspace_root")?,
        );
        let relative = |path: &str| -> Result<PathBuf, String> {
            Path::new(path)
                .strip_prefix(&root)
                .map(Path::to_path_buf)
                .map_err(|_| format!("{path} is outside the workspace {}", root.display()))
        };
        let ids: BTreeSet<&str> = metadata["workspace_members"]
            .as_array()
            .ok_or("cargo metadata: no workspace_members")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let mut members = Vec::new();
        let packages = metadata["packages"]
            .as_array()
            .ok_or("cargo metadata: no packages")?;
        for package in packages {
            if !package["id"].as_str().is_some_and(|id| ids.contains(id)) {
                continue;
            }
            let manifest = package["manifest_path"].as_str().unwrap_or_default();
            let mut targets = Vec::new();
            for target in package["targets"].as_array().into_iter().flatten() {
                let kinds: Vec<&str> = target["kind"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                targets.push(Target {
                    kind: kinds.join(","),
                    name: target["name"].as_str().unwrap_or_default().to_owned(),
                    src: relative(target["src_path"].as_str().unwrap_or_default())?,
                });
            }
            members.push(Member {
                name: package["name"].as_str().unwrap_or_default().to_owned(),
                dir: relative(manifest)?
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default(),
                features: package["features"]
                    .as_object()
                    .map(|features| features.keys().cloned().collect())
                    .unwrap_or_default(),
                targets,
            });
        }
        members.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self { root, members })
    }

    fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|member| member.name == name)
    }

    /// What this copy of the workspace lacks that `real` has: members, and targets with files.
    fn problems_against(&self, real: &Workspace) -> Vec<String> {
        let mut problems = Vec::new();
        for member in &real.members {
            let Some(copied) = self.member(&member.name) else {
                problems.push(format!(
                    "workspace member `{}` ({}/) is missing",
                    member.name,
                    member.dir.display()
                ));
                continue;
            };
            if copied.dir != member.dir {
                problems.push(format!(
                    "workspace member `{}` is at {}/, not {}/",
                    member.name,
                    copied.dir.display(),
                    member.dir.display()
                ));
            }
            // cargo metadata does not check target files (cargo 1.95, tried by deleting each in a
            // copy): a target declared with a `path` ([[bin]], [[test]] here) is listed even when
            // its file is absent, and a [[bench]] without `path`, like an auto-discovered
            // src/lib.rs, silently disappears with its file. Hence both checks below.
            for target in &member.targets {
                let found = copied
                    .targets
                    .iter()
                    .find(|t| t.kind == target.kind && t.name == target.name);
                let problem = match found {
                    None => "is missing",
                    Some(t) if t.src != target.src => "is read from another file",
                    Some(t) if !self.root.join(&t.src).is_file() => "has no file",
                    Some(_) => continue,
                };
                problems.push(format!(
                    "{} target `{}` of `{}` ({}) {problem}",
                    target.kind,
                    target.name,
                    member.name,
                    target.src.display()
                ));
            }
        }
        problems
    }

    /// Whether this workspace has what `image` builds: its package, binary and features.
    fn problems_for(&self, image: &Image) -> Vec<String> {
        let Some(package) = self.member(image.package) else {
            return vec![format!("package `{}` is missing", image.package)];
        };
        let mut problems = Vec::new();
        let has_bin = package
            .targets
            .iter()
            .any(|t| t.kind == "bin" && t.name == image.bin);
        if !has_bin {
            problems.push(format!(
                "package `{}` has no bin target `{}`",
                image.package, image.bin
            ));
        }
        for feature in image.features {
            if !package.features.contains(*feature) {
                problems.push(format!(
                    "package `{}` has no feature `{feature}`",
                    image.package
                ));
            }
        }
        problems
    }
}

/// This workspace, read once for all tests.
///
/// # Panics
/// If cargo metadata fails on it, for instance when a dependency was never downloaded.
fn real_workspace() -> &'static Workspace {
    static WORKSPACE: OnceLock<Workspace> = OnceLock::new();
    WORKSPACE.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ sits in the workspace");
        cargo_metadata(&root.join("Cargo.toml"), root)
            .and_then(|metadata| Workspace::from_metadata(&metadata))
            .unwrap_or_else(|error| panic!("cargo metadata on this workspace: {error}"))
    })
}

/// `cargo metadata --locked --offline` for one platform, run in `dir` so that only the cargo
/// configuration a build there would see applies.
///
/// For one platform because without `--filter-platform` cargo wants every platform's
/// dependencies downloaded (Android's, Windows'), which `--offline` cannot do on a machine that
/// built only for itself; `--locked` is checked against Cargo.lock all the same.
fn cargo_metadata(manifest: &Path, dir: &Path) -> Result<Value, String> {
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--locked", "--offline", "--format-version", "1"])
        .args(["--filter-platform", host_triple()])
        .arg("--manifest-path")
        .arg(manifest)
        .current_dir(dir)
        .output()
        .map_err(|error| format!("cannot run cargo: {error}"))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).trim().to_owned());
    }
    serde_json::from_slice(&output.stdout)
        .map_err(|error| format!("cargo metadata printed no JSON: {error}"))
}

/// # Panics
/// If the file cannot be read.
fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}
