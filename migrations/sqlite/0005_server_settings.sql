-- Facts about the server fixed at first start, such as the server name every stored ID carries.
CREATE TABLE server_settings (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
