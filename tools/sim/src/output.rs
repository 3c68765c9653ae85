//! What the reports share: a folder written whole or not at all, the colours of
//! their charts, and HTML escaping.

use std::path::{Path, PathBuf};

use plotters::chart::{ChartContext, SeriesLabelPosition};
use plotters::coord::CoordTranslate;
use plotters::prelude::DrawingBackend;
use plotters::style::{BLACK, Color, RGBColor, WHITE};

/// The charts' colours, in order (matplotlib's, which readers know).
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Draws a chart's legend at `position`, alike on every chart of every report.
pub fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(position)
        .draw()
        .map_err(|error| error.to_string())
}

/// Text for HTML, attributes included.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Writes `files` (name, contents) into the folder `out`, replacing what was
/// there: they go to a temporary folder beside it, which is renamed into place
/// at the end, so `out` never holds half of them. On failure, the path that
/// could not be written and why; nothing is left behind but what was there.
pub fn write_folder<C: AsRef<[u8]>>(out: &Path, files: &[(&str, C)]) -> Result<(), (PathBuf, std::io::Error)> {
    let failed = |path: &Path| {
        let path = path.to_owned();
        move |source: std::io::Error| (path, source)
    };
    let name = out.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    let parent = out.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let temporary: PathBuf = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&temporary);
    std::fs::create_dir_all(&temporary).map_err(failed(&temporary))?;
    let result = (|| {
        for (file, contents) in files {
            let path = temporary.join(file);
            std::fs::write(&path, contents).map_err(failed(&path))?;
        }
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        if out.exists() {
            std::fs::rename(out, &old).map_err(failed(out))?;
        }
        std::fs::rename(&temporary, out).map_err(failed(out))?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&temporary);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_is_replaced_whole_or_left_as_it_was() {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("report");
        write_folder(&out, &[("a.txt", "one"), ("b.txt", "two")]).expect("written");
        write_folder(&out, &[("c.txt", "three")]).expect("replaced");
        let names: Vec<String> = std::fs::read_dir(&out)
            .expect("folder")
            .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["c.txt"], "the old files are gone");
        // A file name that cannot be written leaves the folder as it was.
        let error = write_folder(&out, &[("d.txt", "four"), ("no/such/dir.txt", "five")]).expect_err("fails");
        assert!(error.0.ends_with("no/such/dir.txt"), "{:?}", error.0);
        assert_eq!(std::fs::read_to_string(out.join("c.txt")).expect("kept"), "three");
        assert_eq!(std::fs::read_dir(dir.path()).expect("parent").count(), 1, "no temporary folder is left");
    }
}
