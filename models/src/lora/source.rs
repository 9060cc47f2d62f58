//! Where an adapter's files may be read from: a local directory under one of the allowed
//! roots (`--lora-adapter-root`), the directory and its adapter files compared after
//! canonicalizing, so neither `..` nor a symlink (hub snapshots are symlinks into the cache's
//! blobs: allowed when the cache is a root) leads out. Remote sources are SageMaker's to
//! place, never fetched here.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SourceError {
    #[error("`{0}` is a remote source: Lantern reads adapters from local directories only (on SageMaker, the platform places an adapter inference component's artifact and names its directory)")]
    Remote(String),
    #[error("`{}` does not exist or cannot be read", .0.display())]
    Missing(PathBuf),
    #[error("`{}` is outside the adapter roots ({roots}): add one with --lora-adapter-root", path.display())]
    OutsideRoots { path: PathBuf, roots: String },
}

/// The canonical directory `source` names, if it and the adapter files in it lie under one
/// of `roots` (a file may be a symlink too). A path outside the roots is refused as such
/// whether or not it exists, so answers do not tell what exists elsewhere.
pub fn resolve(source: &str, roots: &[PathBuf]) -> Result<PathBuf, SourceError> {
    if source.contains("://") {
        return Err(SourceError::Remote(source.to_string()));
    }
    let path = Path::new(source);
    let roots_canonical: Vec<PathBuf> =
        roots.iter().filter_map(|r| r.canonicalize().ok()).collect();
    let inside = |p: &Path| roots_canonical.iter().any(|root| p.starts_with(root));
    let outside = || SourceError::OutsideRoots {
        path: path.to_path_buf(),
        roots: roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    };
    let Ok(canonical) = path.canonicalize() else {
        // Only a path that would be inside is reported missing.
        let lexical = path
            .components()
            .all(|c| c != std::path::Component::ParentDir);
        return Err(if lexical && path.is_absolute() && inside(path) {
            SourceError::Missing(path.to_path_buf())
        } else {
            outside()
        });
    };
    if !inside(&canonical) {
        return Err(outside());
    }
    for file in [super::CONFIG_FILE, super::WEIGHTS_FILE] {
        if let Ok(target) = canonical.join(file).canonicalize() {
            if !inside(&target) {
                return Err(outside());
            }
        }
    }
    Ok(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_directories_under_a_root_resolve() -> std::io::Result<()> {
        let place = tempfile::tempdir()?;
        let root = place.path().join("adapters");
        let outside = place.path().join("secrets");
        std::fs::create_dir_all(root.join("tone"))?;
        std::fs::create_dir_all(&outside)?;
        let roots = [root.clone()];
        let text = |p: &Path| p.to_string_lossy().into_owned();
        assert_eq!(
            resolve(&text(&root.join("tone")), &roots),
            Ok(root.join("tone").canonicalize()?)
        );
        // `..` out of the root.
        let escape = root.join("tone/../../secrets");
        assert!(matches!(
            resolve(&text(&escape), &roots),
            Err(SourceError::OutsideRoots { .. })
        ));
        // A symlink inside the root that points out of it.
        std::os::unix::fs::symlink(&outside, root.join("link-out"))?;
        assert!(matches!(
            resolve(&text(&root.join("link-out")), &roots),
            Err(SourceError::OutsideRoots { .. })
        ));
        // One that stays inside (a hub snapshot's links into its blobs) is fine.
        std::os::unix::fs::symlink(root.join("tone"), root.join("link-in"))?;
        assert!(resolve(&text(&root.join("link-in")), &roots).is_ok());
        assert!(matches!(
            resolve("s3://bucket/adapters/tone", &roots),
            Err(SourceError::Remote(_))
        ));
        assert!(matches!(
            resolve(&text(&root.canonicalize()?.join("absent")), &roots),
            Err(SourceError::Missing(_))
        ));
        // Outside the roots, existing or not, the answer is the same.
        assert!(matches!(
            resolve(&text(&outside.join("absent")), &roots),
            Err(SourceError::OutsideRoots { .. })
        ));
        // An adapter file that is a symlink out of the roots.
        std::fs::write(outside.join("weights"), b"secret")?;
        std::fs::create_dir_all(root.join("sly"))?;
        std::os::unix::fs::symlink(
            outside.join("weights"),
            root.join("sly").join(crate::lora::WEIGHTS_FILE),
        )?;
        assert!(matches!(
            resolve(&text(&root.join("sly")), &roots),
            Err(SourceError::OutsideRoots { .. })
        ));
        // A root that is a prefix by name only does not contain its sibling.
        let sibling = place.path().join("adapters-evil");
        std::fs::create_dir_all(&sibling)?;
        assert!(resolve(&text(&sibling), &roots).is_err());
        Ok(())
    }
}
