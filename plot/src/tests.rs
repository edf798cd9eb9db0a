use super::*;

fn series(label: &str, pts: &[(f64, f64)]) -> Series {
    Series {
        label: label.into(),
        points: pts.to_vec(),
    }
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
                    }],
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
    assert_eq!(img.dimensions(), fig.size());
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
