mod aliases;
mod cli;
mod confinement;
mod events;
mod hardening;
mod proxy;
mod support;
mod watcher;
