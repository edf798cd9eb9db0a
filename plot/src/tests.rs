use super::*;

fn series(label: &str, pts: &[(f64, f64)]) -> Series {
    Series::new(label, pts.to_vec())
}

fn figure() -> Figure {
    Figure {
        title: "Test loss and diversity".into(),
        panels: vec![
            Panel {
                title: "QA".into(),
                x_label: "generated share".into(),
                y_label: "test loss".into(),
                kind: PanelKind::Lines {
                    series: vec![series(
                        "SmolLM2-135M",
                        &[(0.0, 3.1), (0.5, 3.3), (1.0, 3.6)],
                    )],
                    x_ticks: None,
                    right: Some(RightAxis {
                        label: "normalized Distinct-5".into(),
                        series: vec![series("diversity", &[(0.0, 1.0), (0.5, 0.8), (1.0, 0.6)])],
                    }),
                    references: vec![Reference {
                        label: "real".into(),
                        y: 3.0,
                        interval: None,
                    }],
                    ordered: false,
                },
            },
            Panel {
                title: "Stories".into(),
                x_label: "level".into(),
                y_label: "test loss".into(),
                kind: PanelKind::Lines {
                    series: vec![series("m", &[(0.0, 2.0), (1.0, 1.9), (2.0, 1.7)])],
                    x_ticks: Some(vec!["Gen-D0".into(), "Gen-D1".into(), "Gen-D2".into()]),
                    right: None,
                    references: vec![],
                    ordered: false,
                },
            },
            Panel {
                title: "Lengths".into(),
                x_label: "words".into(),
                y_label: "density".into(),
                kind: PanelKind::Histogram {
                    samples: vec![
                        Sample {
                            label: "real".into(),
                            values: vec![1.0, 2.0, 2.0, 3.0, 9.0],
                        },
                        Sample {
                            label: "Gen-D0".into(),
                            values: vec![4.0, 5.0, 5.0, 6.0],
                        },
                    ],
                    bins: 8,
                },
            },
            Panel {
                title: "t-SNE".into(),
                x_label: "x".into(),
                y_label: "y".into(),
                kind: PanelKind::Scatter {
                    series: vec![
                        series("real", &[(0.0, 0.0), (1.0, 1.0)]),
                        series("gen", &[(5.0, 5.0), (6.0, 4.0)]),
                    ],
                },
            },
        ],
        footer: String::new(),
    }
}

#[test]
fn renders_svg_and_png_with_text_and_colours() {
    let dir = tempfile::tempdir().unwrap();
    let fig = figure();
    let (svg, png) = fig.render(dir.path(), "fig").unwrap();
    // To look at the figure: FLOW_PLOT_KEEP=/some/dir cargo test -p flow-plot
    if let Some(keep) = std::env::var_os("FLOW_PLOT_KEEP") {
        fig.render(std::path::Path::new(&keep), "fig").unwrap();
    }
    let text = std::fs::read_to_string(&svg).unwrap();
    for label in [
        "Test loss and diversity",
        "generated share",
        "normalized Distinct-5",
        "Gen-D1",
        "SmolLM2-135M",
        "t-SNE",
    ] {
        assert!(text.contains(label), "SVG lacks `{label}`");
    }
    let img = image::open(&png).unwrap().to_rgb8();
    let scaled = |(w, h): (u32, u32)| (w * PNG_SCALE, h * PNG_SCALE);
    assert_eq!(
        img.dimensions(),
        scaled(fig.size()),
        "the PNG is the SVG at 2x"
    );
    // The first series' colour and the text (dark pixels) are drawn.
    let count = |f: &dyn Fn(&image::Rgb<u8>) -> bool| img.pixels().filter(|p| f(p)).count();
    let blue = count(&|p| p.0 == [0, 114, 178]);
    let dark = count(&|p| p.0.iter().all(|&c| c < 60));
    assert!(blue > 200, "series colour drawn on {blue} pixels");
    assert!(dark > 2000, "text and axes drawn on {dark} pixels");
}

#[test]
fn bad_data_is_refused_with_the_panel_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut fig = figure();
    if let PanelKind::Lines { series, .. } = &mut fig.panels[1].kind {
        series[0].points[1].1 = f64::NAN;
    }
    let e = fig.render(dir.path(), "fig").unwrap_err().to_string();
    assert!(e.contains("Stories") && e.contains("finite"), "{e}");
    let e = Figure::default().render(dir.path(), "x").unwrap_err();
    assert!(matches!(e, PlotError::Empty));
}

#[test]
fn densities_share_bins_and_integrate_to_one() {
    let a = [1.0, 2.0, 2.0, 3.0];
    let b = [3.0, 4.0];
    let edges = bin_edges([&a[..], &b[..]], 3);
    assert_eq!(edges, vec![1.0, 2.0, 3.0, 4.0]);
    let d = density(&a, &edges);
    assert_eq!(d, vec![0.25, 0.5, 0.25]);
    let total: f64 = density(&b, &edges).iter().sum::<f64>() * 1.0;
    assert!((total - 1.0).abs() < 1e-12);
    // One distinct value still gets a bin.
    assert_eq!(bin_edges([&[5.0][..]], 1), vec![4.5, 5.5]);
}

/// One lines panel whose points carry 95% intervals (error bars with caps),
/// a reference with a band, and a footer saying what the bars are.
fn with_intervals() -> Figure {
    let mut loss = series("SmolLM2-135M", &[(0.0, 3.1), (0.5, 3.3), (1.0, 3.6)]);
    loss.intervals = vec![Some((3.0, 3.2)), None, Some((3.4, 3.9))];
    let mut div = series("diversity", &[(0.0, 1.0), (1.0, 0.6)]);
    div.intervals = vec![Some((0.9, 1.05)), Some((0.5, 0.7))];
    Figure {
        title: "Fig. 5".into(),
        panels: vec![Panel {
            title: "QA".into(),
            x_label: "generated share".into(),
            y_label: "test loss".into(),
            kind: PanelKind::Lines {
                series: vec![loss],
                x_ticks: None,
                right: Some(RightAxis {
                    label: "normalized Distinct-5".into(),
                    series: vec![div],
                }),
                references: vec![Reference {
                    label: "real".into(),
                    y: 2.8,
                    interval: Some((2.7, 2.9)),
                }],
                ordered: false,
            },
        }],
        footer: "3 seeds per point, 64 test examples; bars: 95% CI (Student t over seeds)".into(),
    }
}

/// SVG `<line>` elements (plotters draws straight segments, not polylines,
/// as these) in a colour.
fn lines_in(svg: &str, colour: &str) -> usize {
    svg.lines()
        .filter(|l| l.trim_start().starts_with("<line") && l.contains(colour))
        .count()
}

#[test]
fn intervals_are_error_bars_with_caps_and_the_footer_is_drawn() {
    let dir = tempfile::tempdir().unwrap();
    let fig = with_intervals();
    let (svg, png) = fig.render(dir.path(), "fig").unwrap();
    if let Some(keep) = std::env::var_os("FLOW_PLOT_KEEP") {
        fig.render(std::path::Path::new(&keep), "intervals")
            .unwrap();
    }
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.contains("bars: 95% CI (Student t over seeds)"),
        "no footer"
    );
    // Each bar is three straight lines (stem and two caps) in its series'
    // colour: two bars on the left (blue), two on the right (the third colour).
    assert_eq!(lines_in(&text, "#0072B2"), 6, "{text}");
    assert_eq!(lines_in(&text, "#009E73"), 6);
    // The caps are 10 pixels wide and level.
    let caps = text
        .lines()
        .filter(|l| l.trim_start().starts_with("<line") && l.contains("#0072B2"))
        .filter(|l| {
            let attr = |name: &str| -> f64 {
                let at = l.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
                l[at..].split('"').next().unwrap().parse().unwrap()
            };
            attr("y1") == attr("y2") && (attr("x2") - attr("x1")).abs() == 10.0
        })
        .count();
    assert_eq!(caps, 4);
    // The reference's band: a translucent rectangle in the reference's colour.
    assert!(
        text.lines()
            .any(|l| l.contains("<rect") && l.contains("#D55E00") && l.contains("opacity=\"0.15")),
        "no band"
    );
    let img = image::open(&png).unwrap().to_rgb8();
    let (w, h) = img.dimensions();
    assert_eq!((w, h), (fig.size().0 * PNG_SCALE, fig.size().1 * PNG_SCALE));
    assert_eq!(fig.size(), (PANEL_SIZE.0, PANEL_SIZE.1 + FOOTER_HEIGHT));
    // The footer's text: dark pixels in the strip under the panel.
    let footer_ink = (PANEL_SIZE.1 * PNG_SCALE..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c < 120))
        .count();
    assert!(footer_ink > 100, "footer drawn on {footer_ink} pixels");
    // Without intervals the same panel draws no such lines.
    let mut plain = fig.clone();
    if let PanelKind::Lines { series, right, .. } = &mut plain.panels[0].kind {
        series[0].intervals.clear();
        right.as_mut().unwrap().series[0].intervals.clear();
    }
    plain.footer.clear();
    let (svg, _) = plain.render(dir.path(), "plain").unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert_eq!(lines_in(&text, "#0072B2"), 0);
    assert!(!text.contains("bars: 95%"));
}

#[test]
fn bad_intervals_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut fig = with_intervals();
    if let PanelKind::Lines { series, .. } = &mut fig.panels[0].kind {
        series[0].intervals.pop();
    }
    let e = fig.render(dir.path(), "fig").unwrap_err().to_string();
    assert!(e.contains("QA") && e.contains("interval"), "{e}");
    let mut fig = with_intervals();
    if let PanelKind::Lines { series, .. } = &mut fig.panels[0].kind {
        series[0].intervals[0] = Some((3.2, 3.0));
    }
    assert!(fig.render(dir.path(), "fig").is_err());
}

/// Ordered levels get a sequential scale (dark to light, none of them the reference's
/// grey); whole-number x axes label only whole numbers; a lone series' axis label is
/// drawn in its colour.
#[test]
fn ordered_levels_integer_ticks_and_coloured_axis_labels() {
    let dir = tempfile::tempdir().unwrap();
    let levels: Vec<Series> = (0..3)
        .map(|k| {
            let y = 3.0 - 0.1 * k as f64;
            series(
                &format!("Gen-D{}", 2 * k + 1),
                &[(0.0, y), (1.0, y + 0.1), (2.0, y + 0.3)],
            )
        })
        .collect();
    let fig = Figure {
        title: String::new(),
        panels: vec![Panel {
            title: "QA".into(),
            x_label: "epoch".into(),
            y_label: "test loss".into(),
            kind: PanelKind::Lines {
                series: levels,
                x_ticks: None,
                right: None,
                references: vec![Reference {
                    label: "real".into(),
                    y: 2.5,
                    interval: None,
                }],
                ordered: true,
            },
        }],
        footer: String::new(),
    };
    let (svg, _) = fig.render(dir.path(), "ordered").unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    // Viridis' first colour, its middle and the reference's grey; not the palette's blue.
    assert!(text.contains("#440154"), "first level");
    assert!(text.contains("#5A5A5A"), "reference grey");
    assert!(!text.contains("#0072B2"), "no categorical colour");
    // Whole-number ticks only: 0, 1, 2 and no 0.5 or 1.5.
    let labels = svg_texts(&text);
    let labels: Vec<&str> = labels.iter().map(|(_, t)| t.as_str()).collect();
    for t in ["0", "1", "2"] {
        assert!(labels.contains(&t), "tick {t} in {labels:?}");
    }
    assert!(
        !labels.iter().any(|l| *l == "0.5" || *l == "1.5"),
        "{labels:?}"
    );

    // A loss on the left and a diversity on the right: each label in its series' colour.
    let fig = with_intervals();
    let (svg, _) = fig.render(dir.path(), "twin").unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    let texts = svg_texts(&text);
    let label_colour = |label: &str| -> String {
        let (tag, _) = texts.iter().find(|(_, t)| t == label).unwrap();
        let at = tag.find("fill=\"").unwrap() + 6;
        tag[at..at + 7].to_string()
    };
    assert_eq!(label_colour("test loss"), "#0072B2");
    assert_ne!(label_colour("normalized Distinct-5"), "#000000");
}

/// Every `<text ...>` tag of an SVG as plotters writes it, with its text (on the next line).
fn svg_texts(svg: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = svg.lines().collect();
    lines
        .windows(2)
        .filter(|w| w[0].trim_start().starts_with("<text"))
        .map(|w| (w[0].to_string(), w[1].trim().to_string()))
        .collect()
}
