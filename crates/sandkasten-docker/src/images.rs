//! Images of the docker runtime are the engine's own: listing, importing
//! (a rootfs tarball like `docker import`, or a `docker save` archive like
//! `docker load`, then tagged with the requested name) and removing.

use crate::{api_err, status_of};
use bollard::query_parameters::{
    CreateImageOptionsBuilder, ImportImageOptionsBuilder, RemoveImageOptionsBuilder,
    TagImageOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use sandkasten_runtime::{ImageInfo, RuntimeError};
use std::io::Read;
use std::path::Path;

/// Every tagged image of the engine (untagged ones cannot be named).
pub async fn list(docker: &Docker) -> Result<Vec<ImageInfo>, RuntimeError> {
    let images = docker
        .list_images(None::<bollard::query_parameters::ListImagesOptions>)
        .await
        .map_err(api_err("listing images"))?;
    let mut out: Vec<ImageInfo> = images
        .into_iter()
        .flat_map(|i| {
            let (id, size) = (i.id, i.size.max(0) as u64);
            i.repo_tags
                .into_iter()
                .filter(|t| t != "<none>:<none>")
                // Hibernated sandboxes' commits (and the copies of snapshots
                // sessions run on) are no images to start.
                .filter(|t| !t.starts_with(&format!("{}:", crate::HIBERNATED_REPO)))
                // Sandbox snapshots are listed by the engine, by their ids.
                .filter(|t| !t.starts_with(&format!("{}:", crate::SNAPSHOT_REPO)))
                .map(move |name| ImageInfo {
                    name,
                    digest: id.clone(),
                    size_bytes: size,
                    builtin: false,
                })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// `repo[:tag]` split at the tag's colon (a colon before the last `/` is a
/// registry port, not a tag).
fn split_reference(name: &str) -> (&str, &str) {
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') && !repo.is_empty() => (repo, tag),
        _ => (name, "latest"),
    }
}

/// Imports `archive` as image `name`.
pub async fn import(
    docker: &Docker,
    name: &str,
    archive: &Path,
) -> Result<ImageInfo, RuntimeError> {
    let (repo, tag) = split_reference(name);
    let path = archive.to_path_buf();
    let is_save = sandkasten_runtime::blocking("inspecting an image archive", move || {
        is_docker_save(&path)
            .map_err(|e| RuntimeError::InvalidImage(format!("unreadable archive: {e}")))
    })
    .await?;
    let body = || async {
        let f = tokio::fs::File::open(archive)
            .await
            .map_err(|e| RuntimeError::io(format!("opening {}", archive.display()), e))?;
        Ok::<_, RuntimeError>(bollard::body_try_stream(tokio_util::io::ReaderStream::new(
            f,
        )))
    };
    if is_save {
        let opts = ImportImageOptionsBuilder::default().quiet(true).build();
        let mut stream = docker.import_image(opts, body().await?, None);
        let mut loaded = None;
        while let Some(item) = stream.next().await {
            let info = item.map_err(invalid("loading the image archive"))?;
            for line in info.stream.iter().flat_map(|s| s.lines()) {
                let line = line.trim();
                if let Some(r) = line
                    .strip_prefix("Loaded image: ")
                    .or_else(|| line.strip_prefix("Loaded image ID: "))
                {
                    loaded.get_or_insert_with(|| r.to_string());
                }
            }
        }
        let loaded = loaded
            .ok_or_else(|| RuntimeError::InvalidImage("the archive contains no image".into()))?;
        let opts = TagImageOptionsBuilder::default()
            .repo(repo)
            .tag(tag)
            .build();
        docker
            .tag_image(&loaded, Some(opts))
            .await
            .map_err(invalid(format!("tagging {loaded} as {name}")))?;
    } else {
        let opts = CreateImageOptionsBuilder::default()
            .from_src("-")
            .repo(repo)
            .tag(tag)
            .build();
        let mut stream = docker.create_image(Some(opts), Some(body().await?), None);
        while let Some(item) = stream.next().await {
            item.map_err(invalid("importing the root filesystem"))?;
        }
    }
    inspect(docker, name).await
}

/// One image by name.
pub async fn inspect(docker: &Docker, name: &str) -> Result<ImageInfo, RuntimeError> {
    let i = docker.inspect_image(name).await.map_err(|e| {
        if status_of(&e) == Some(404) {
            RuntimeError::ImageNotFound(name.to_string())
        } else {
            api_err(format!("inspecting image {name}"))(e)
        }
    })?;
    Ok(ImageInfo {
        name: name.to_string(),
        digest: i.id.unwrap_or_default(),
        size_bytes: i.size.unwrap_or(0).max(0) as u64,
        builtin: false,
    })
}

/// Removes the tag `name` (and the image when it was its last tag).
pub async fn remove(docker: &Docker, name: &str) -> Result<(), RuntimeError> {
    let opts = RemoveImageOptionsBuilder::default().build();
    match docker.remove_image(name, Some(opts), None).await {
        Ok(_) => Ok(()),
        Err(e) if status_of(&e) == Some(404) => Err(RuntimeError::ImageNotFound(name.into())),
        Err(e) => Err(api_err(format!("removing image {name}"))(e)),
    }
}

/// An engine's refusal of an archive is the archive's fault (400, 500 with
/// a tar error): reported as an invalid image with the engine's message.
fn invalid(ctx: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> RuntimeError {
    let ctx = ctx.into();
    move |e| match e {
        bollard::errors::Error::DockerResponseServerError { message, .. }
        | bollard::errors::Error::DockerStreamError { error: message } => {
            RuntimeError::InvalidImage(format!("{ctx}: {message}"))
        }
        other => api_err(ctx)(other),
    }
}

/// True for a `docker save` archive (a `manifest.json` at its top level),
/// plain or gzip-compressed; anything else is imported as a root
/// filesystem.
fn is_docker_save(path: &Path) -> std::io::Result<bool> {
    let mut f = std::fs::File::open(path)?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic)?;
    drop(f);
    let f = std::io::BufReader::new(std::fs::File::open(path)?);
    let reader: Box<dyn Read> = if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(f))
    } else {
        Box::new(f)
    };
    let mut ar = tar::Archive::new(reader);
    let Ok(entries) = ar.entries() else {
        return Ok(false);
    };
    for e in entries {
        let Ok(e) = e else { return Ok(false) };
        let Ok(p) = e.path() else { continue };
        let p = p.to_string_lossy();
        if p.trim_start_matches("./") == "manifest.json" {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_at_the_tag() {
        assert_eq!(split_reference("a"), ("a", "latest"));
        assert_eq!(
            split_reference("sandbox-runtime:python"),
            ("sandbox-runtime", "python")
        );
        assert_eq!(split_reference("reg:5000/x"), ("reg:5000/x", "latest"));
        assert_eq!(split_reference("reg:5000/x:1"), ("reg:5000/x", "1"));
    }

    #[test]
    fn save_archives_are_told_from_rootfs_tarballs() {
        let d = tempfile::tempdir().unwrap();
        let mk = |name: &str, entry: &str| {
            let p = d.path().join(name);
            let mut b = tar::Builder::new(std::fs::File::create(&p).unwrap());
            let mut h = tar::Header::new_gnu();
            h.set_size(2);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, entry, &b"{}"[..]).unwrap();
            b.finish().unwrap();
            p
        };
        assert!(is_docker_save(&mk("save.tar", "manifest.json")).unwrap());
        assert!(!is_docker_save(&mk("rootfs.tar", "etc/passwd")).unwrap());
        let junk = d.path().join("junk");
        std::fs::write(&junk, b"not a tar at all").unwrap();
        assert!(!is_docker_save(&junk).unwrap());
    }
}
