//! The test support itself, against the real services: each test really gets
//! an isolated database and namespace, and all three servers answer.

use deadpool_redis::redis::AsyncCommands;
use fleet_tests::TestContext;
use lapin::{Connection, ConnectionProperties};

#[tokio::test]
async fn each_context_gets_its_own_database_and_namespace() {
    let (first, second) = tokio::join!(TestContext::new(), TestContext::new());
    assert_ne!(first.namespace, second.namespace);
    assert_ne!(first.database_url, second.database_url);

    sqlx::query("CREATE TABLE marker (id int)")
        .execute(&first.db)
        .await
        .unwrap();
    let (visible,): (bool,) = sqlx::query_as("SELECT to_regclass('marker') IS NOT NULL")
        .fetch_one(&second.db)
        .await
        .unwrap();
    assert!(
        !visible,
        "a table of one test leaked into another test's database"
    );
}

#[tokio::test]
async fn rabbitmq_and_redis_answer() {
    let ctx = TestContext::new().await;

    let connection = Connection::connect(&ctx.amqp_url, ConnectionProperties::default())
        .await
        .expect("RabbitMQ at AMQP_URL");
    assert!(connection.status().connected());
    connection.close(200, "done".into()).await.unwrap();

    let client = deadpool_redis::redis::Client::open(ctx.redis_url.as_str()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{}:probe", ctx.namespace);
    let _: () = redis.set(&key, "hello").await.unwrap();
    let value: String = redis.get(&key).await.unwrap();
    let _: () = redis.del(&key).await.unwrap();
    assert_eq!(value, "hello");
}

#[tokio::test]
async fn settings_carry_the_test_namespace_and_urls() {
    let ctx = TestContext::new().await;
    let settings = ctx.settings("order-worker", &[("FLEET__TRANSPORT", "redis")]);
    assert_eq!(settings.namespace, ctx.namespace.as_str());
    assert_eq!(settings.database.url.expose(), ctx.database_url);
    assert_eq!(settings.http.port, 0);
    assert_eq!(settings.transport, fleet_config::Transport::Redis);
}
