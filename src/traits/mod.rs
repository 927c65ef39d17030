//! Computed traits: purchase histories per profile and the models over them (buy-till-you-die
//! models for purchase counts, activity and spend). `btyd` holds the models and their fitting;
//! `cdnow` checks them against the literature's reference data.

pub mod btyd;
pub mod cdnow;
pub mod compute;
pub mod features;
pub mod fit;
pub mod logistic;
pub mod propensity;
pub mod report;
pub mod rfm;
pub mod special;
