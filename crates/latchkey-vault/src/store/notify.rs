//! Notifications between instances on one database: PostgreSQL `NOTIFY`/`LISTEN` on
//! `latchkey_<schema>`; nothing on SQLite (the trait's defaults).

/// What a [`Notifications`] stream yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A payload another instance sent with [`Store::notify`](super::Store::notify).
    Message(String),
    /// The channel broke: notifications sent from now until [`Notice::Resumed`] are lost.
    Lost,
    /// The channel is (again) listening. Anything sent before this may have been
    /// missed, so a receiver treats it as "everything changed".
    Resumed,
}

/// Notifications from the other instances on the same database.
#[async_trait::async_trait]
pub trait Notifications: Send {
    /// The next notice. Reconnects by itself after [`Notice::Lost`] (the next call
    /// waits until the database answers again, then yields [`Notice::Resumed`]).
    async fn recv(&mut self) -> Notice;
}

/// The PostgreSQL notification methods.
/// Part of each backend's one `impl Store`, assembled by `sql_store!` (the bodies
/// expand in `store`, which imports the names they use).
macro_rules! methods {
    ($name:ident $tables:tt { $($methods:tt)* }) => {
        $crate::store::sql_store! { @impl $name $tables { $($methods)*
            async fn notify(&self, payload: &str) -> Result<(), StoreError> {
                // The channel is named after the schema, so several deployments (or test runs)
                // in one database never hear each other.
                sqlx::query("SELECT pg_notify('latchkey_' || current_schema(), $1)")
                    .bind(payload)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn listen(&self) -> Result<Option<Box<dyn Notifications>>, StoreError> {
                let schema: String = sqlx::query_scalar("SELECT current_schema()")
                    .fetch_one(&self.pool)
                    .await?;
                Ok(Some(Box::new(PgNotifications {
                    pool: self.pool.clone(),
                    channel: format!("latchkey_{schema}"),
                    listener: None,
                })))
            }
        } }
    };
}
pub(super) use methods;

/// [`Notifications`] over PostgreSQL `LISTEN`: a dedicated connection, replaced after
/// any failure (a fresh `LISTEN` is the only way to know from when on nothing is missed).
pub(super) struct PgNotifications {
    pub(super) pool: sqlx::PgPool,
    pub(super) channel: String,
    pub(super) listener: Option<sqlx::postgres::PgListener>,
}

/// How long to wait between attempts to listen again while the database is away.
const RELISTEN_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

#[async_trait::async_trait]
impl Notifications for PgNotifications {
    async fn recv(&mut self) -> Notice {
        let Some(listener) = self.listener.as_mut() else {
            loop {
                match sqlx::postgres::PgListener::connect_with(&self.pool).await {
                    Ok(mut l) => match l.listen(&self.channel).await {
                        Ok(()) => {
                            self.listener = Some(l);
                            return Notice::Resumed;
                        }
                        Err(_) => tokio::time::sleep(RELISTEN_EVERY).await,
                    },
                    Err(_) => tokio::time::sleep(RELISTEN_EVERY).await,
                }
            }
        };
        match listener.try_recv().await {
            Ok(Some(n)) => Notice::Message(n.payload().to_owned()),
            Ok(None) | Err(_) => {
                self.listener = None;
                Notice::Lost
            }
        }
    }
}
