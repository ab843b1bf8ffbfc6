pub use rstar2_sandbox as sandbox;
