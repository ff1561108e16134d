//! Building the SDK client: the standard configuration chain with the
//! overrides of [`StoreConfig`], path-style addressing where virtual hosts
//! cannot resolve, and an HTTP client that honours the proxy variables.

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

use crate::StoreConfig;

/// Builds an S3 client from the standard chain and `args`.
pub async fn s3_client(args: &StoreConfig) -> Client {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(p) = &args.profile {
        loader = loader.profile_name(p);
    }
    if let Some(r) = &args.region {
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some(e) = &args.endpoint_url {
        loader = loader.endpoint_url(e);
    }
    if args.no_sign_request {
        loader = loader.no_credentials();
    } else if let Some(c) = &args.credentials {
        loader = loader.credentials_provider(Credentials::new(
            c.access_key_id.clone(),
            c.secret_access_key.clone(),
            c.session_token.clone(),
            None,
            "zvmount-explicit",
        ));
    }
    let sdk = loader
        .http_client(proxy_aware_client())
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(args.timeout.min(Duration::from_secs(10)))
                .build(),
        )
        .load()
        .await;
    let endpoint = args
        .endpoint_url
        .clone()
        .or_else(|| sdk.endpoint_url().map(str::to_string));
    let path_style =
        args.force_path_style || endpoint.as_deref().is_some_and(endpoint_wants_path_style);
    let mut b = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(path_style);
    if sdk.region().is_none() {
        b = b.region(Region::new("us-east-1"));
    }
    Client::from_conf(b.build())
}

/// The SDK's default HTTPS client (rustls, aws-lc), but with proxies taken
/// from the environment: `HTTP_PROXY` for `http://` endpoints,
/// `HTTPS_PROXY` for `https://` ones (through `CONNECT`), `NO_PROXY`
/// exceptions. Without those variables it connects directly, as before.
fn proxy_aware_client() -> aws_sdk_s3::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    use aws_smithy_http_client::{Builder, Connector, proxy::ProxyConfig};
    Builder::new().build_with_connector_fn(|settings, components| {
        let mut b = Connector::builder().proxy_config(ProxyConfig::from_env());
        b.set_connector_settings(settings.cloned());
        if let Some(c) = components {
            b.set_sleep_impl(c.sleep_impl());
        }
        b.tls_provider(Provider::Rustls(CryptoMode::AwsLc)).build()
    })
}

/// Virtual-host addressing needs DNS for `bucket.HOST`: impossible for IP
/// addresses and `localhost`.
fn endpoint_wants_path_style(endpoint: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(endpoint) else {
        return false;
    };
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    host.parse::<std::net::IpAddr>().is_ok() || host == "localhost" || host.ends_with(".localhost")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_style_for_ip_and_localhost() {
        assert!(endpoint_wants_path_style("http://127.0.0.1:9000"));
        assert!(endpoint_wants_path_style("http://[::1]:9000"));
        assert!(endpoint_wants_path_style("http://localhost:9000"));
        assert!(!endpoint_wants_path_style(
            "https://obs.cn-north-4.myhuaweicloud.com"
        ));
        assert!(!endpoint_wants_path_style("not a url"));
    }
}
