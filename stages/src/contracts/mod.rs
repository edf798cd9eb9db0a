//! The files stages hand each other, one module per contract: the file
//! names, the writer the producing kind calls and the readers its consumers
//! call. A kind reads another kind's output only through these, so a format
//! changes in one place.
//!
//! | contract | files (and metrics) | written by | read by |
//! |---|---|---|---|
//! | [`dataset`] | `data.jsonl` | source, mix, subset, generate_stories, generate_qa, paraphrase, replace | every kind that takes examples; plot (histograms) |
//! | [`topics`] | `topics.json` | topics | generate_stories |
//! | [`embeddings`] | `embeddings.npy`, `ids.json` | embed | embed_kl, tsne |
//! | [`adapter`] | `adapter_config.json`, `adapter_model.safetensors`, metric `base_model` | train_lora | eval_loss |
//! | [`points`] | `points.csv` | tsne | plot (scatter) |
//! | [`loss_curve`] | `train_loss.csv`, metric `loss_curve` | train_lora | plot (curves) |
//! | [`per_example`] | `per_example.csv` (`id,loss,tokens,loss_with_end,tokens_with_end`) | eval_loss | table, plot (bootstrap intervals) |
//!
//! Files no other stage reads (`scores.json`, `eval.json`, `kl.json`,
//! `series.csv`, tables and figures) are named in the kind that writes them.

pub mod adapter;
pub mod dataset;
pub mod embeddings;
pub mod loss_curve;
pub mod per_example;
pub mod points;
pub mod topics;
