//! rorqual's examples live beside this file, one `[[example]]` each; see `README.md`.
